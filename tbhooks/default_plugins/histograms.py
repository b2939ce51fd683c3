"""Histograms: weights, gradients and activations, binned with torch on the tensor's own device.

On a logging step the training thread only enqueues :func:`histogram_row` (no host sync); the run's background
thread reads the small rows back and writes them with ``SummaryWriter.add_histogram_raw``.  FSDP2's sharded
parameters are binned shard by shard (:func:`sharded_rows`).  Bins follow ``torch.histc``: ``bins`` equal buckets
from the smallest to the largest finite value, the maximum in the last one, a constant tensor's range widened to
``value ± 1``.  NaN and infinite values are counted out (in no bucket or statistic), with one warning per run.
"""

from __future__ import annotations

import math
import threading
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import torch

from tbhooks.capture import Capture
from tbhooks.default_plugins.common import check_bool, check_int, is_sharded
from tbhooks.markers import hookimpl

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from torch.utils.tensorboard import SummaryWriter

    from tbhooks.run import Run

CHUNK = 1 << 22
"""Elements binned at once, so temporaries stay bounded on very large tensors."""

STATS = 6
"""Leading entries of a row: min, max, num, sum, sum of squares, non-finite count."""


class DeviceHistogram(NamedTuple):
    """One histogram, as ``SummaryWriter.add_histogram_raw`` takes it.

    ``bucket_limits[i]`` is bucket ``i``'s right edge (the first starts at ``min``); ``min`` to ``sum_squares``
    cover the finite values only, ``nonfinite`` counts the NaN and infinite values left out.
    """

    min: float
    max: float
    num: int
    sum: float
    sum_squares: float
    bucket_limits: list[float]
    bucket_counts: list[float]
    nonfinite: int


def _dtypes(flat: torch.Tensor) -> tuple[torch.dtype, torch.dtype]:
    """``(work, wide)``: buckets are found in ``work`` (float32, or float64 for float64 and integer
    tensors, as ``torch.histc`` would), sums kept in ``wide`` (float64; float32 on MPS, which has none)."""
    wide = torch.float32 if flat.device.type == "mps" else torch.float64
    return (torch.float32 if flat.is_floating_point() and flat.dtype != torch.float64 else wide), wide


def _finite(values: torch.Tensor) -> torch.Tensor | None:
    """The mask of the finite values, or ``None`` where all are known finite: only on the CPU, where reading the
    sum back syncs nothing (a finite sum means no NaN or inf; one that overflows just takes the masked way)."""
    if values.device.type == "cpu" and math.isfinite(float(values.sum())):
        return None
    return torch.isfinite(values)


def _local_stats(flat: torch.Tensor) -> torch.Tensor:
    """``[low, high, num, sum, sum_squares, numel]`` of the finite values of ``flat`` (wide dtype, on its
    device; ``low``/``high`` are NaN when there is none)."""
    work, wide = _dtypes(flat)
    low = high = torch.full((), torch.nan, dtype=wide, device=flat.device)
    num, total, square = (flat.new_zeros((), dtype=wide) for _ in range(3))
    for chunk in flat.split(CHUNK):
        values = chunk.to(work)
        finite = _finite(values)
        if finite is None:
            kept, count = values.to(wide), num.new_tensor(values.numel())
        else:  # non-finite values count nowhere: in the sums as 0, in min and max as the finite ones' mean
            kept, count = torch.where(finite, values, 0.0).to(wide), finite.sum(dtype=wide)
            values = torch.where(finite, values, (kept.sum() / count).to(work))
        least, most = torch.aminmax(values)
        low, high = torch.fmin(low, least.to(wide)), torch.fmax(high, most.to(wide))  # fmin/fmax skip NaN
        num, total, square = num + count, total + kept.sum(), square + (kept * kept).sum()
    return torch.stack([low, high, num, total, square, num.new_tensor(flat.numel())])


def _edges(stats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``stats`` with min and max set to 0 where nothing is finite, and the binning range ``(left, right)``:
    ``[min, max]``, widened to ``value ± 1`` where they are equal (``torch.histc``'s rule)."""
    empty = stats[2] == 0
    stats[0], stats[1] = torch.where(empty, 0.0, stats[0]), torch.where(empty, 0.0, stats[1])
    same = stats[0] == stats[1]
    return torch.where(same, stats[0] - 1.0, stats[0]), torch.where(same, stats[1] + 1.0, stats[1])


def _counts(flat: torch.Tensor, left: torch.Tensor, right: torch.Tensor, bins: int) -> torch.Tensor:
    """The bucket counts of ``flat``'s finite values over ``[left, right]`` (wide dtype, on its device)."""
    work, wide = _dtypes(flat)
    left, right = left.to(work), right.to(work)
    counts = flat.new_zeros(bins + 1, dtype=wide)
    for chunk in flat.split(CHUNK):
        values = chunk.to(work)
        finite = _finite(values)
        position = ((values - left) * bins / (right - left)).clamp_(0, bins - 1)
        if finite is not None:
            position = torch.where(finite, position, bins)  # bucket `bins`: counted out
        index = position.long()
        counts.scatter_add_(0, index, counts.new_ones(()).expand(index.shape))
    return counts[:bins]


def _row(stats: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    return torch.cat([stats[:5], (stats[5] - stats[2]).reshape(1), counts])


def histogram_row(tensor: torch.Tensor, bins: int) -> torch.Tensor:
    """The histogram of a non-empty ``tensor`` as one 1-D tensor on its device, with no host sync.

    Layout: ``[min, max, num, sum, sum_squares, nonfinite, count_0, ..., count_{bins-1}]`` (float64; float32 on
    MPS).  A value's bucket is ``torch.histc``'s, ``floor((x - min) * bins / (max - min))``.
    """
    flat = tensor.detach().reshape(-1)
    stats = _local_stats(flat)
    left, right = _edges(stats)
    return _row(stats, _counts(flat, left, right, bins))


def sharded_rows(tensors: Sequence[torch.Tensor], bins: int) -> list[torch.Tensor]:
    """Whole-parameter rows of DTensors (FSDP2's sharded parameters and gradients), gathering nothing.

    The global range and sums come from ``all_reduce``; each rank bins its shard over that range and the counts
    are summed.  A collective: every rank calls it with the same tensors in the same order.
    """
    import torch.distributed as dist

    if not tensors:
        return []
    group = tensors[0].device_mesh.get_group()  # type: ignore[attr-defined]
    flats = [tensor.to_local().detach().reshape(-1) for tensor in tensors]  # type: ignore[attr-defined]
    stats = torch.stack([_local_stats(flat) for flat in flats])
    extremes = torch.stack([stats[:, 0], -stats[:, 1]])
    dist.all_reduce(extremes, op=dist.ReduceOp.MIN, group=group)
    sums = stats[:, 2:].contiguous()
    dist.all_reduce(sums, group=group)
    stats = torch.cat([extremes[0:1].T, -extremes[1:2].T, sums], dim=1)
    edges = [_edges(row) for row in stats]
    counts = torch.stack([_counts(flat, left, right, bins) for flat, (left, right) in zip(flats, edges, strict=True)])
    dist.all_reduce(counts, group=group)
    return [_row(row, count) for row, count in zip(stats, counts, strict=True)]


def bucket_limits(low: float, high: float, bins: int) -> list[float]:
    """The right edges of ``bins`` equal buckets from ``low`` to ``high`` (widened by 1 when they are equal)."""
    if low == high:
        low, high = low - 1.0, high + 1.0
    width = (high - low) / bins
    return [low + width * k for k in range(1, bins)] + [high]


def to_histogram(row: Sequence[float], bins: int) -> DeviceHistogram:
    """A row of :func:`histogram_row`, read back, as a :class:`DeviceHistogram`."""
    low, high, num, total, square, nonfinite = row[:STATS]
    counts = [float(count) for count in row[STATS : STATS + bins]]
    return DeviceHistogram(low, high, int(num), total, square, bucket_limits(low, high, bins), counts, int(nonfinite))


def device_histogram(tensor: torch.Tensor, bins: int = 64) -> DeviceHistogram:
    """The histogram of ``tensor``, binned on its own device (only ``bins + 6`` numbers reach the host).

    :raises TypeError: ``tensor`` is not a tensor, or ``bins`` not an int.
    :raises ValueError: ``tensor`` is empty, or ``bins < 1``.
    """
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"device_histogram expects a tensor, got {type(tensor).__name__}")
    bins = check_int("device_histogram", "bins", bins, minimum=1)
    if tensor.numel() == 0:
        raise ValueError("device_histogram got an empty tensor")
    return to_histogram(histogram_row(tensor, bins).tolist(), bins)


def write_histogram(writer: SummaryWriter, tag: str, hist: DeviceHistogram, step: int) -> None:
    """Write ``hist`` as histogram ``tag`` at ``step`` with ``add_histogram_raw``."""
    writer.add_histogram_raw(
        tag, hist.min, hist.max, hist.num, hist.sum, hist.sum_squares, hist.bucket_limits, hist.bucket_counts, step
    )


def _check_activations(value: object) -> str | tuple[str, ...]:
    if value == "all":
        return "all"
    if isinstance(value, str) or not isinstance(value, (list, tuple)):
        raise TypeError(
            f"Histograms(activations=...) expects a list of submodule names or 'all', got {type(value).__name__}"
            + (f" {value!r}" if isinstance(value, str) else "")
        )
    for name in value:
        if not isinstance(name, str):
            raise TypeError(f"Histograms(activations=...) expects submodule names (str), got {name!r}")
    return tuple(value)


def _binnable(tensor: torch.Tensor) -> bool:
    return (
        bool(tensor.numel())
        and tensor.layout == torch.strided
        and not tensor.is_complex()
        and tensor.device.type != "meta"
    )


class Histograms:
    """Log histograms of weights, gradients and activations at ``on_batch_end`` every N steps, on rank 0.

    Tags (HISTOGRAMS, DISTRIBUTIONS): ``weights/<parameter>`` (after the optimizer step), ``grads/<parameter>``
    (where ``p.grad`` is set), ``activations/<module>`` (the first tensor of its output, captured on those steps
    only).  Empty tensors are skipped; a tensor with no finite value is not written.

    :param every_n_steps: the logging interval in training steps (default 1000).
    :param weights: log every parameter (default True).
    :param grads: log every parameter's gradient (default True).
    :param activations: submodule names (from ``model.named_modules()``) whose outputs to log, or ``"all"`` for
        every leaf module; default ``()``, none.  Unknown names are dropped with one warning.
    :param bins: buckets per histogram (default 64).
    """

    name = "histograms"

    def __init__(
        self,
        every_n_steps: int = 1000,
        weights: bool = True,
        grads: bool = True,
        activations: Sequence[str] | str = (),
        bins: int = 64,
    ) -> None:
        self.every_n_steps = check_int("Histograms", "every_n_steps", every_n_steps, minimum=1)
        self.weights = check_bool("Histograms", "weights", weights)
        self.grads = check_bool("Histograms", "grads", grads)
        self.activations = _check_activations(activations)
        self.bins = check_int("Histograms", "bins", bins, minimum=1)
        self._modules: tuple[str, ...] = ()
        # Shared with the background thread: the steps found with NaN/inf values.
        self._lock = threading.Lock()
        self._flagged: list[tuple[int, list[str]]] = []

    def batch_end_due(self, step: int) -> bool:
        """The schedule: every ``every_n_steps``-th step (the captures have the same)."""
        return step % self.every_n_steps == 0

    @hookimpl
    def on_capture_request(self, run: Run) -> list[Capture]:
        modules = dict(run.model.named_modules())
        if self.activations == "all":
            wanted = [name for name, module in modules.items() if not any(True for _ in module.children())]
        else:
            wanted = list(dict.fromkeys(self.activations))
            unknown = [name for name in wanted if name not in modules]
            if unknown:
                known = ", ".join(repr(n) for n in list(modules)[:20]) + (", ..." if len(modules) > 20 else "")
                run.warn_once(
                    "histograms:unknown-modules",
                    f"tbhooks: Histograms(activations=...) names no submodule {', '.join(map(repr, unknown))}; "
                    f"those are skipped (known: {known})",
                )
                wanted = [name for name in wanted if name in modules]
        self._modules = tuple(wanted)
        return [Capture(module=name, kind="output", every_n_steps=self.every_n_steps) for name in self._modules]

    @hookimpl
    def on_fit_start(self) -> None:
        with self._lock:
            self._flagged = []  # a plugin object may serve several runs: each gets its own warning

    @hookimpl
    def on_batch_end(self, run: Run, step: int, captured: Mapping[str, torch.Tensor]) -> None:
        tagged: list[tuple[str, torch.Tensor]] = []
        parameters = list(run.model.named_parameters())
        if self.weights:
            tagged += [(run.tag("weights", name), p) for name, p in parameters]
        if self.grads:
            tagged += [(run.tag("grads", name), p.grad) for name, p in parameters if p.grad is not None]
        for name in self._modules:
            tensor = captured.get(f"output:{name}")
            if tensor is not None:
                tagged.append((run.tag("activations", name or type(run.model).__name__), tensor))
        tagged = [(tag, tensor) for tag, tensor in tagged if _binnable(tensor)]
        with torch.no_grad():
            # Sharded parameters (FSDP2): every rank takes part in the collectives, only rank 0 writes.
            sharded = [index for index, (_, tensor) in enumerate(tagged) if is_sharded(tensor)]
            rows = dict(zip(sharded, sharded_rows([tagged[i][1] for i in sharded], self.bins), strict=True))
            if not run.is_writer or not tagged:
                return
            self._warn_nonfinite(run)
            # Enqueued here, ahead of the next step's in-place updates; read back in the background.
            rows = [rows[i] if i in rows else histogram_row(tensor, self.bins) for i, (_, tensor) in enumerate(tagged)]
        by_device: dict[torch.device, list[int]] = {}
        for index, row in enumerate(rows):
            by_device.setdefault(row.device, []).append(index)
        stacked = [(indices, torch.stack([rows[i] for i in indices])) for indices in by_device.values()]
        streams = [torch.cuda.current_stream(t.device) if t.device.type == "cuda" else None for _, t in stacked]
        run.submit(self._write, run, step, [tag for tag, _ in tagged], stacked, streams)

    def _write(
        self,
        run: Run,
        step: int,
        tags: list[str],
        stacked: list[tuple[list[int], torch.Tensor]],
        streams: list[torch.cuda.Stream | None],
    ) -> None:
        """On the background thread: read the rows back (the wait for the device happens here) and write."""
        table = np.zeros((len(tags), STATS + self.bins))
        for (indices, rows), stream in zip(stacked, streams, strict=True):
            if stream is not None:
                with torch.cuda.stream(stream):  # the copy waits for the kernels of its own stream
                    table[indices] = rows.cpu().double().numpy()
            else:
                table[indices] = rows.cpu().double().numpy()
        flagged = []
        for tag, row in zip(tags, table.tolist(), strict=True):
            hist = to_histogram(row, self.bins)
            if hist.nonfinite:
                flagged.append(f"{tag} ({hist.nonfinite} of {hist.num + hist.nonfinite})")
            if hist.num:
                write_histogram(run.writer, tag, hist, step)
        if flagged:
            with self._lock:
                self._flagged.append((step, flagged))

    @hookimpl
    def on_epoch_end(self, run: Run) -> None:
        self._warn_nonfinite(run)

    @hookimpl
    def on_fit_end(self, run: Run) -> None:
        self._warn_nonfinite(run)  # the core has waited for the background work: every step is in

    @hookimpl
    def on_exception(self, run: Run) -> None:
        self._warn_nonfinite(run)  # what the background work has found so far: the run ends without waiting

    def _warn_nonfinite(self, run: Run) -> None:
        """Warn once per run about the first step with NaN/inf values, on the training thread (a warning
        from the background thread would escape ``catch_warnings``)."""
        with self._lock:
            found, self._flagged = self._flagged, []
        if found:
            step, flagged = found[0]
            more = f" and {len(flagged) - 3} more" if len(flagged) > 3 else ""
            run.warn_once(
                "histograms:nonfinite",
                f"tbhooks: histograms at step {step}: NaN/inf values in {', '.join(flagged[:3])}{more}; "
                f"they are left out of the histograms (a tensor with no finite value is not written)",
            )
