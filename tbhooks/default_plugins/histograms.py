"""Histograms: weights, gradients and activations, every N steps, binned on the device.

Tags (the HISTOGRAMS and DISTRIBUTIONS dashboards, against the global step):

``weights/<parameter name>``
    each parameter, after the optimizer step;
``grads/<parameter name>``
    each parameter's gradient (``p.grad``; parameters without one are skipped);
``activations/<module name>``
    the output of each requested submodule (its first tensor, for modules
    that return tuples or dicts), captured by the core's module hooks.

How the work is split: :func:`device_histogram` and
:func:`device_histograms` compute the minimum, maximum, count, sum, sum of
squares and the bucket counts with torch on the tensor's own device, with no
host synchronisation (two passes over the tensor, masked and scattered on
the device), then copy the small results of all tensors to the host at once
(one copy per device).  The whole tensor never leaves the device.  CPU
tensors, which have nothing to synchronise with, are binned in cache-sized
chunks with ``torch.histc``'s own arithmetic, three to four times faster
than ``torch.histc`` on one thread; small ones (under 65,536 elements) take
the same arithmetic in numpy, in one pass, two to four times faster than
torch calls on tensors that small.

The plugin keeps both the binning and the read back off the training
thread where it can.  On a logging step the training thread only:

* for tensors on CUDA and other accelerators, enqueues the kernels that
  compute the rows and stacks them per device, without reading anything
  back (the kernels run before the next step's in-place optimizer update:
  same stream);
* for CPU tensors, copies them: the next optimizer step changes the
  weights in place, and ``zero_grad`` may zero the gradients, so the values
  of this step are kept as they are; a few hundred KB per step for a small
  network.  The small ones (under 65,536 elements) are flattened into one
  ``torch.cat`` per dtype, one copy for all, and binned together in one
  pass of numpy calls (about twenty for the whole step), so the background
  thread holds the interpreter lock for a few dozen calls, not a dozen per
  tensor.

Both are handed to the run's background thread (``run.submit``), which
copies the device rows to the host (that wait for the device blocks only
the background thread; on CUDA the copy runs on the stream that computed
them), bins the CPU copies, and writes the protobufs.  It cannot warn
itself (``warnings.warn`` in another thread escapes ``catch_warnings`` and,
under ``-W error``, becomes an error of the task): it records the tensors
with non-finite values, and the training thread warns at its next logging
step, epoch end, or fit end (which waits for the plugin's tasks).  The next
logging step with CPU tensors waits for the previous one's task, so at most
one step's copies are held at a time.  Errors in the background task are
reported as errors of the plugin; the run waits for every task before it
closes the writer.

Bins: ``bins`` equal-width buckets from the smallest to the largest finite
value, the rule of ``torch.histc``: a value ``x`` goes to bucket
``floor((x - min) * bins / (max - min))``, the maximum into the last bucket;
when every finite value is the same the range is widened to
``[value - 1, value + 1]``, as ``torch.histc`` does.  TensorBoard reads
``bucket_limit[i]`` as the right edge of bucket ``i`` and starts the first
non-empty bucket at ``min``, so the limits written are the right edges of
these buckets and the bucket counts equal ``torch.histc`` of the finite
values.

Non-finite values (NaN, +inf, -inf) are counted out: they are in no bucket
and in none of min, max, num, sum, sum of squares.  Their number is returned
as ``DeviceHistogram.nonfinite``, and the plugin warns once per run when a
logged tensor held any.  A tensor with no finite value is not written.
Empty tensors are skipped.
"""

from __future__ import annotations

import contextlib
import math
import threading
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import torch

from tbhooks._records import histograms_summary, summary_event, write_event
from tbhooks.capture import Capture
from tbhooks.default_plugins._options import check_bool, check_int
from tbhooks.markers import hookimpl

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping, Sequence

    from torch.utils.tensorboard import SummaryWriter

    from tbhooks.run import Run

_CHUNK = 1 << 24
"""Elements processed at once, so temporaries stay bounded on very large tensors."""

_CPU_CHUNK = 1 << 16
"""Elements binned at once on the CPU: the scratch buffers stay in the core's cache and are never faulted in anew."""

_NUMPY_BELOW = 1 << 16
"""CPU tensors with fewer elements are binned with numpy in one pass (:func:`_row_numpy`): on tensors this
small a torch call's own cost (several microseconds each, a dozen calls a tensor) outweighs the arithmetic,
and numpy's is a fraction of it.  From about this size on, whole-tensor temporaries cost more in page faults
than the chunked loop."""

_STATS = 6
"""Leading entries of a device row: min, max, num, sum, sum of squares, non-finite count."""


class DeviceHistogram(NamedTuple):
    """One histogram, ready for ``SummaryWriter.add_histogram_raw``.

    ``bucket_limits[i]`` is the right edge of bucket ``i``; the first bucket
    starts at the lower end of the range (``min``).  ``min``, ``max``,
    ``num``, ``sum`` and ``sum_squares`` cover the finite values only;
    ``nonfinite`` counts the NaN and infinite values left out.
    """

    min: float
    max: float
    num: int
    sum: float
    sum_squares: float
    bucket_limits: list[float]
    bucket_counts: list[float]
    nonfinite: int


def _check_bins(bins: object) -> int:
    if isinstance(bins, bool) or not isinstance(bins, int):
        raise TypeError(f"bins expects an int, got {type(bins).__name__}")
    if bins < 1:
        raise ValueError(f"bins expects an int >= 1, got {bins}")
    return bins


def _row_dtype(device: torch.device) -> torch.dtype:
    # MPS has no float64; float32 still counts exactly up to 2**24 per bucket.
    return torch.float32 if device.type == "mps" else torch.float64


def histogram_row(tensor: torch.Tensor, bins: int) -> torch.Tensor:
    """The histogram of ``tensor`` as one 1-D tensor on ``tensor``'s device, without a host sync.

    Layout: ``[min, max, num, sum, sum_squares, nonfinite, count_0, ..., count_{bins-1}]``
    (float64; float32 on MPS).  ``min``/``max`` are those of the finite
    values (0 when there is none).  :func:`device_histograms` turns rows into
    :class:`DeviceHistogram`.  ``tensor`` must not be empty.

    On the CPU, where there is nothing to synchronise with, the row comes
    from a chunked loop with ``torch.histc``'s arithmetic (three to four times
    faster than ``torch.histc`` on one thread; small tensors take the same
    arithmetic in numpy); on every other device from two sync-free passes
    that put each value in the same bucket.
    """
    flat = tensor.detach().reshape(-1)
    if flat.numel() == 0:
        raise ValueError("histogram of an empty tensor")
    work = torch.float64 if flat.dtype == torch.float64 else torch.float32
    if flat.device.type == "cpu":
        return _row_cpu(flat.to(work), bins)
    return _row_sync_free(flat.to(work) if flat.numel() <= _CHUNK else flat, bins)


def _row_cpu(flat: torch.Tensor, bins: int) -> torch.Tensor:
    """:func:`histogram_row` for a flat float32/float64 CPU tensor: reading values back costs no sync here."""
    row = _small_row(flat, bins)
    if row is not None:
        return torch.from_numpy(row)
    low, high = (float(v) for v in torch.aminmax(flat))
    values = flat
    if not (math.isfinite(low) and math.isfinite(high)):  # NaN propagates, so finite bounds mean all finite
        values = flat[torch.isfinite(flat)]
        if values.numel():
            low, high = (float(v) for v in torch.aminmax(values))
    num = values.numel()
    if not num:
        low = high = total = square = 0.0
        counts = torch.zeros(bins, dtype=torch.float64)
    elif low == high:
        # Every value is the same, so one value's bucket is everyone's; torch.histc widens the empty
        # range itself (to value ± 1, or one ulp further out where ± 1 rounds away).
        counts = torch.histc(values[:1], bins=bins, min=low, max=high).double() * num
        total, square = low * num, low * low * num
    else:
        counts, total, square = _bin_cpu(values, low, high, bins)
    stats = torch.tensor([low, high, num, total, square, flat.numel() - num], dtype=torch.float64)
    return torch.cat([stats, counts])


def _small_row(flat: torch.Tensor, bins: int) -> np.ndarray | None:
    """:func:`_row_numpy` of a flat float32/float64 CPU tensor under :data:`_NUMPY_BELOW` elements; ``None``
    for any other tensor and where that function declines."""
    if flat.dtype not in (torch.float32, torch.float64) or not 0 < flat.numel() < _NUMPY_BELOW:
        return None
    try:
        array = flat.numpy()
    except RuntimeError:  # a tensor numpy cannot share (a negative view, say): the torch path
        return None
    return _row_numpy(array, bins)


def _row_numpy(values: np.ndarray, bins: int) -> np.ndarray | None:
    """:func:`histogram_row` of a small flat float32/float64 array (see :func:`_segment_rows`)."""
    return _segment_rows(values, [values.size], bins)[0]


def _segment_rows(values: np.ndarray, lengths: Sequence[int], bins: int) -> list[np.ndarray | None]:
    """The :func:`histogram_row` of each segment of a flat float32/float64 array: ``values`` is the
    segments one after the other, ``lengths`` their sizes (each > 0).

    The arithmetic is that of :func:`_bin_cpu`, in the array's dtype, value by
    value, but for all segments at once: about twenty numpy calls for a whole
    logging step's tensors instead of a dozen per tensor.  That is the point:
    the plugin's background thread bins a step's few dozen small tensors here,
    sharing the interpreter lock with the training thread for every Python-level
    call, while numpy's loops run without it.  ``None`` for a segment only the
    torch path handles (non-finite values, a constant segment, a range near the
    dtype's overflow).
    """
    count = len(lengths)
    sizes = np.asarray(lengths, dtype=np.intp)
    offsets = np.zeros(count, dtype=np.intp)
    np.cumsum(sizes[:-1], out=offsets[1:])
    lows = np.minimum.reduceat(values, offsets)  # NaN propagates: finite bounds mean every value is finite
    highs = np.maximum.reduceat(values, offsets)
    with np.errstate(over="ignore", invalid="ignore"):
        span = highs.astype(np.float64) - lows.astype(np.float64)
        good = np.isfinite(span) & (lows != highs) & (span * bins < float(np.finfo(values.dtype).max) / 2)
    if not good.all():
        kept = np.flatnonzero(good)
        rows: list[np.ndarray | None] = [None] * count
        if kept.size:
            parts = [values[offsets[k] : offsets[k] + sizes[k]] for k in kept]
            for k, row in zip(kept, _segment_rows(np.concatenate(parts), sizes[kept].tolist(), bins), strict=True):
                rows[k] = row
        return rows
    # The bucket rule of _bin_cpu, operation by operation in the dtype: (x - low) * bins / (high - low).
    position = np.subtract(values, np.repeat(lows, sizes))
    position *= values.dtype.type(bins)
    position /= np.repeat(highs - lows, sizes)
    index = position.astype(np.intp)
    index += np.repeat(np.arange(0, count * (bins + 1), bins + 1, dtype=np.intp), sizes)  # each segment's buckets
    counts = np.bincount(index, minlength=count * (bins + 1)).reshape(count, bins + 1)
    counts[:, bins - 1] += counts[:, bins]  # the maximum, and whatever rounds up to it, in the last bucket
    wide = values.astype(np.float64)
    totals = np.add.reduceat(wide, offsets)
    # Squared in place and summed, not np.dot: numpy's BLAS may hand a long dot product to its own
    # threads, which then wait for a core the training process is using (20 ms instead of 1 here).
    squares = np.add.reduceat(np.multiply(wide, wide, out=wide), offsets)
    table = np.empty((count, _STATS + bins), dtype=np.float64)
    table[:, 0], table[:, 1], table[:, 2] = lows, highs, sizes
    table[:, 3], table[:, 4], table[:, 5] = totals, squares, 0
    table[:, _STATS:] = counts[:, :bins]
    return list(table)


class _CpuBatch(NamedTuple):
    """Small float32/float64 CPU tensors of one dtype, flattened one after the other (one copy for all)."""

    indices: list[int]
    values: torch.Tensor
    lengths: list[int]


def _pack_cpu(
    tensors: Sequence[torch.Tensor], *, copy: bool = True
) -> tuple[list[_CpuBatch], list[tuple[int, torch.Tensor]]]:
    """CPU ``tensors`` packed to bin: the small float32/float64 ones (under :data:`_NUMPY_BELOW`
    elements) concatenated per dtype, one ``torch.cat`` each, and any other on its own (cloned with
    ``copy``, as is without), with each one's index in ``tensors``.

    The plugin calls it on the training thread at a logging step, where one
    concatenation costs a fraction of a clone per tensor, and :func:`_cpu_rows`
    bins the copies on the background thread.  :func:`device_histograms` bins
    at once and copies only the small tensors (the concatenation).
    """
    groups: dict[torch.dtype, list[int]] = {}
    singles: list[tuple[int, torch.Tensor]] = []
    for index, tensor in enumerate(tensors):
        if tensor.dtype in (torch.float32, torch.float64) and 0 < tensor.numel() < _NUMPY_BELOW:
            groups.setdefault(tensor.dtype, []).append(index)
        else:
            singles.append((index, tensor.detach().clone() if copy else tensor))
    batches = []
    for indices in groups.values():
        flats = [tensors[i].detach().reshape(-1) for i in indices]
        batches.append(_CpuBatch(indices, torch.cat(flats), [flat.numel() for flat in flats]))
    return batches, singles


def _cpu_rows(
    batches: Sequence[_CpuBatch], singles: Sequence[tuple[int, torch.Tensor]], bins: int
) -> dict[int, np.ndarray]:
    """The rows of what :func:`_pack_cpu` packed, as float64 numpy arrays, by index: each batch binned at
    once by :func:`_segment_rows`, anything else (and any segment it declines) by :func:`histogram_row`."""
    rows: dict[int, np.ndarray] = {}
    for batch in batches:
        values = batch.values.numpy()
        start = 0
        for index, length, row in zip(
            batch.indices, batch.lengths, _segment_rows(values, batch.lengths, bins), strict=True
        ):
            if row is None:
                row = histogram_row(batch.values[start : start + length], bins).numpy()
            rows[index] = row
            start += length
    for index, tensor in singles:
        rows[index] = histogram_row(tensor, bins).numpy()
    return rows


def _bin_cpu(values: torch.Tensor, low: float, high: float, bins: int) -> tuple[torch.Tensor, float, float]:
    """Bucket counts (float64), sum and sum of squares of a flat, finite float32/float64 CPU tensor.

    ``low < high`` are its minimum and maximum.  A value goes to bucket
    ``int((x - low) * bins / (high - low))`` computed in the tensor's dtype,
    operation by operation as ``torch.histc``'s CPU kernel does (so values
    on bucket edges land where it puts them), the maximum into the last
    bucket.  The work runs over cache-sized chunks into reused scratch
    buffers: whole-tensor temporaries would cost more in page faults than
    the arithmetic.  Sums are accumulated in float64.
    """
    near_overflow = (high - low) * bins >= torch.finfo(values.dtype).max / 2  # in float64: cheap, and safe by 2x
    if near_overflow and not math.isfinite(float((torch.tensor(high, dtype=values.dtype) - low) * bins)):
        # (max - min) * bins overflows the dtype (values near its largest finite number), where
        # torch.histc miscounts.  Scaling by a power of two is exact (but for subnormals), so every
        # value keeps the bucket it would have with an unbounded exponent.
        factor = 2.0 ** (bins.bit_length() + 1)
        counts, total, square = _bin_cpu(values / factor, low / factor, high / factor, bins)
        return counts, total * factor, square * factor * factor
    width = float(torch.tensor(high, dtype=values.dtype) - low)  # rounded to the dtype, as histc's kernel has it
    size = min(values.numel(), _CPU_CHUNK)
    position = torch.empty(size, dtype=values.dtype)
    index = torch.empty(size, dtype=torch.int32)
    # float32 values are summed in float64 (a float32 dot product over 20M values is off by up to 7e-4).
    double = None if values.dtype == torch.float64 else torch.empty(size, dtype=torch.float64)
    counts = torch.zeros(bins + 1, dtype=torch.int64)
    total = square = 0.0
    for chunk in values.split(_CPU_CHUNK):
        n = chunk.numel()
        here, where = (position, index) if n == size else (position[:n], index[:n])
        wide = chunk if double is None else (double if n == size else double[:n]).copy_(chunk)
        total += float(wide.sum())
        square += float(torch.dot(wide, wide))
        torch.sub(chunk, low, out=here).mul_(bins).div_(width)
        where.copy_(here)  # truncates; every value is in [0, bins]
        counts += torch.bincount(where, minlength=bins + 1)
    counts[bins - 1] += counts[bins]  # the maximum, and whatever rounds up to it, in the last bucket
    return counts[:bins].double(), total, square


def _row_sync_free(flat: torch.Tensor, bins: int) -> torch.Tensor:
    """:func:`histogram_row` without reading anything back: for CUDA and other accelerators."""
    numel = flat.numel()
    work = torch.float64 if flat.dtype == torch.float64 else torch.float32
    out = _row_dtype(flat.device)
    chunks = [c.to(work) for c in flat.split(_CHUNK)] if numel > _CHUNK else [flat.to(work)]

    # Pass 1: range and moments of the finite values.  Non-finite values are
    # masked with torch.where (boolean indexing would need their count on the
    # host, a sync).
    lows: list[torch.Tensor] = []
    highs: list[torch.Tensor] = []
    sums: list[torch.Tensor] = []
    squares: list[torch.Tensor] = []
    counts: list[torch.Tensor] = []
    masks: list[torch.Tensor] = []  # kept for pass 2 when there is one chunk
    for chunk in chunks:
        finite = torch.isfinite(chunk)
        if len(chunks) == 1:
            masks.append(finite)
        lows.append(torch.where(finite, chunk, float("inf")).amin())
        highs.append(torch.where(finite, chunk, float("-inf")).amax())
        zeroed = torch.where(finite, chunk, 0.0)
        sums.append(zeroed.sum())
        squares.append(torch.dot(zeroed, zeroed))
        counts.append(finite.sum())
    if len(chunks) == 1:
        low, high, total, square, num = lows[0], highs[0], sums[0], squares[0], counts[0]
    else:
        low, high = torch.stack(lows).amin(), torch.stack(highs).amax()
        total, square = torch.stack(sums).sum(), torch.stack(squares).sum()
        num = torch.stack(counts).sum()
    some = num > 0
    low, high = torch.where(some, low, 0.0), torch.where(some, high, 0.0)
    # torch.histc widens an empty range to [value - 1, value + 1].
    flat_range = high == low
    left = torch.where(flat_range, low - 1, low)
    width = torch.where(flat_range, high + 1, high) - left

    # Pass 2: bucket counts.  Bucket `bins` collects the non-finite values and
    # is dropped.  scatter_add_ instead of bincount: CUDA's bincount reads the
    # largest index back to the host.
    buckets = torch.zeros(bins + 1, dtype=torch.int64, device=flat.device)
    for chunk in chunks:
        finite = masks[0] if masks else torch.isfinite(chunk)
        # Multiply before dividing: with this order values on a bucket edge
        # land in the bucket torch.histc puts them in (the tests compare).
        # nan_to_num_: a range wider than the dtype (or a constant where ±1 rounds
        # away) makes width inf or 0; such values are binned at the ends, never crash.
        position = ((chunk - left) * bins / width).floor_().nan_to_num_(nan=0.0).clamp_(0, bins - 1)
        index = torch.where(finite, position, float(bins)).long()
        buckets.scatter_add_(0, index, torch.ones(1, dtype=torch.int64, device=flat.device).expand_as(index))

    stats = torch.stack([low.to(out), high.to(out), num.to(out), total.to(out), square.to(out), (numel - num).to(out)])
    return torch.cat([stats, buckets[:bins].to(out)])


def _unpack(row: Sequence[float], bins: int) -> DeviceHistogram:
    low, high, num, total, square, nonfinite = row[:_STATS]
    left, right = (low - 1.0, high + 1.0) if low == high else (low, high)
    step = (right - left) / bins
    # The same float64 operations as left + step * (i + 1) one by one, in one numpy call.
    limits = [*(left + step * np.arange(1, bins, dtype=np.float64)).tolist(), right]
    return DeviceHistogram(
        min=low,
        max=high,
        num=int(num),
        sum=total,
        sum_squares=square,
        bucket_limits=limits,
        bucket_counts=list(row[_STATS : _STATS + bins]),
        nonfinite=int(nonfinite),
    )


def _stacked_rows(tensors: Sequence[torch.Tensor], bins: int) -> list[tuple[list[int], torch.Tensor]]:
    """The rows (:func:`histogram_row`) of ``tensors``, stacked per device, on that device: nothing is read back.

    Returns ``(indices, rows)`` per device: ``rows[k]`` is the row of
    ``tensors[indices[k]]``, shape ``[len(indices), 6 + bins]``.  On CUDA and
    other accelerators the work is only enqueued on the current stream, so
    the training thread can call this on a logging step and leave the read
    back (``rows.cpu().tolist()``, then :func:`_host_histograms`) to another
    thread.  On the CPU the rows are computed here, at once.
    """
    rows = [histogram_row(t, bins) for t in tensors]
    by_device: dict[torch.device, list[int]] = {}
    for index, row in enumerate(rows):
        by_device.setdefault(row.device, []).append(index)
    return [(indices, torch.stack([rows[i] for i in indices])) for indices in by_device.values()]


def _host_histograms(rows: Sequence[Sequence[float]], bins: int) -> list[DeviceHistogram]:
    """:class:`DeviceHistogram` of each row, once read back: ``rows`` is ``stacked.cpu().tolist()``
    of a stack from :func:`_stacked_rows` (or any list of host rows)."""
    return [_unpack(row, bins) for row in rows]


def device_histograms(tensors: Iterable[torch.Tensor], bins: int = 64) -> list[DeviceHistogram]:
    """Histograms of ``tensors``, computed on their devices, with one copy to the host per device.

    The bucket rule and the handling of non-finite values are those of
    :func:`device_histogram`.  Every tensor must be non-empty.
    """
    bins = _check_bins(bins)
    tensors = list(tensors)
    found: dict[int, DeviceHistogram] = {}
    on_cpu = [i for i, tensor in enumerate(tensors) if tensor.device.type == "cpu"]
    elsewhere = [i for i, tensor in enumerate(tensors) if tensor.device.type != "cpu"]
    if on_cpu:
        rows = _cpu_rows(*_pack_cpu([tensors[i] for i in on_cpu], copy=False), bins)
        found.update((on_cpu[k], _unpack(row.tolist(), bins)) for k, row in rows.items())
    for indices, stacked in _stacked_rows([tensors[i] for i in elsewhere], bins):
        # The one synchronisation: every row of this device in one copy.
        found.update(zip([elsewhere[k] for k in indices], _host_histograms(stacked.cpu().tolist(), bins), strict=True))
    return [found[i] for i in range(len(tensors))]


def device_histogram(tensor: torch.Tensor, bins: int = 64) -> DeviceHistogram:
    """The histogram of ``tensor``, binned with torch on its own device.

    Only ``bins + 6`` numbers are copied to the host.  The buckets follow
    ``torch.histc``: ``bins`` equal-width buckets from the smallest to the
    largest finite value (widened to ``value ± 1`` when they are equal); the
    result's ``bucket_limits`` are the buckets' right edges, as
    ``add_histogram_raw`` expects.  NaN and infinite values are counted out
    (see :class:`DeviceHistogram`).

    :raises TypeError: ``tensor`` is not a tensor, or ``bins`` not an int.
    :raises ValueError: ``tensor`` is empty, or ``bins < 1``.
    """
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"device_histogram expects a tensor, got {type(tensor).__name__}")
    if tensor.numel() == 0:
        raise ValueError("device_histogram got an empty tensor")
    return device_histograms([tensor], bins)[0]


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


def _copied(tensor: torch.Tensor) -> bool:
    """Whether the plugin copies ``tensor`` at the logging step and bins the copy on the background
    thread (CPU tensors), rather than enqueueing its row's kernels on the training thread and reading
    the row back on the background thread (CUDA and other accelerators)."""
    return tensor.device.type == "cpu"


def write_histograms(writer: SummaryWriter, step: int, tagged: Iterable[tuple[str, DeviceHistogram]]) -> None:
    """Write each ``(tag, hist)`` (``hist`` from :func:`device_histogram`) at ``step``, as one event.

    TensorBoard reads back what one ``add_histogram_raw`` per tag would
    write (a ``histo`` value per tag, at the same step), for a fraction of
    the time: one event and one hand-off to the writer's thread for a step's
    few dozen histograms, on a thread that shares the interpreter lock with
    training.
    """
    tagged = list(tagged)
    if tagged:
        tags = [tag for tag, _ in tagged]
        stats = np.array([(h.min, h.max, h.num, h.sum, h.sum_squares) for _, h in tagged], dtype=np.float64)
        limits = np.array([h.bucket_limits for _, h in tagged], dtype=np.float64)
        counts = np.array([h.bucket_counts for _, h in tagged], dtype=np.float64)
        write_event(writer, summary_event(histograms_summary(tags, stats, limits, counts), step))


def _bucket_limits(table: np.ndarray, bins: int) -> np.ndarray:
    """The right edges of the buckets of each row of ``table`` (rows of :func:`histogram_row`), ``[N, bins]``:
    the float64 operations of :func:`_unpack`, for every row in one go."""
    low, high = table[:, 0], table[:, 1]
    flat = low == high
    left, right = np.where(flat, low - 1.0, low), np.where(flat, high + 1.0, high)
    step = (right - left) / bins
    limits = np.empty((table.shape[0], bins), dtype=np.float64)
    limits[:, : bins - 1] = left[:, None] + step[:, None] * np.arange(1, bins, dtype=np.float64)
    limits[:, bins - 1] = right
    return limits


def _write_rows(writer: SummaryWriter, step: int, tags: Sequence[str], table: np.ndarray, bins: int) -> None:
    """Write the histograms whose rows (:func:`histogram_row`'s layout) are ``table``, one per tag, as one
    event; rows with no finite value are left out.  The plugin's background thread calls it: from a step's
    rows to the event's bytes takes a few numpy calls, not a message object per histogram."""
    keep = np.flatnonzero(table[:, 2] > 0)
    if keep.size:
        kept = table[keep]
        summary = histograms_summary(
            [tags[i] for i in keep], kept[:, :5], _bucket_limits(kept, bins), kept[:, _STATS : _STATS + bins]
        )
        write_event(writer, summary_event(summary, step))


def write_histogram(writer: SummaryWriter, tag: str, hist: DeviceHistogram, step: int) -> None:
    """Write ``hist`` (from :func:`device_histogram`) as histogram ``tag`` at ``step``, from host numbers only."""
    write_histograms(writer, step, [(tag, hist)])


class Histograms:
    """Log histograms of weights, gradients and activations every N training steps.

    When: ``on_batch_end`` of every step that is a multiple of
    ``every_n_steps`` (so a run shorter than ``every_n_steps`` steps logs
    none), on rank 0; other steps return at once.  Activations are captured
    by module hooks the core attaches on those steps only.  The values are
    those of that step; they are binned (CPU) or read back (accelerators)
    and written on the run's background thread, all before the run closes
    (see the module's "How the work is split").

    Where: HISTOGRAMS and DISTRIBUTIONS dashboards, tags ``weights/<parameter>``,
    ``grads/<parameter>``, ``activations/<module>``.

    :param every_n_steps: the logging interval in training steps (default 1000).
    :param weights: log every parameter (default True).
    :param grads: log every parameter's gradient (default True).
    :param activations: submodule names (as in ``model.named_modules()``)
        whose outputs to log, or ``"all"`` for every leaf module (a module
        without children); default ``[]``, none.  Names not in the model are
        dropped with one warning.
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
        # Shared with the background thread, under ``_idle``: the number of submitted tasks
        # not yet finished, and (step, tensors) of each step found with NaN/inf values.
        self._idle = threading.Condition()
        self._pending = 0
        self._flagged: list[tuple[int, list[str]]] = []

    @hookimpl
    def on_capture_request(self, run: Run) -> list[Capture]:
        names = [name for name, _ in run.model.named_modules()]
        if self.activations == "all":
            modules = dict(run.model.named_modules())
            wanted = [name for name in names if not any(True for _ in modules[name].children())]
        else:
            wanted = list(dict.fromkeys(self.activations))
            unknown = [name for name in wanted if name not in names]
            if unknown:
                known = ", ".join(repr(n) for n in names[:20]) + (", ..." if len(names) > 20 else "")
                run.warn_once(
                    "histograms:unknown-modules",
                    f"tbhooks: Histograms(activations=...) names no submodule {', '.join(map(repr, unknown))}; "
                    f"those are skipped (known: {known})",
                )
                wanted = [name for name in wanted if name in names]
        self._modules = tuple(wanted)
        return [Capture(module=name, kind="output", every_n_steps=self.every_n_steps) for name in self._modules]

    def batch_end_due(self, step: int) -> bool:
        """The core's fast path: ``on_batch_end`` is raised for this plugin only every N steps."""
        return step % self.every_n_steps == 0

    @hookimpl
    def on_fit_start(self) -> None:
        # A plugin object may serve several runs: each one gets its own warning.
        with self._idle:
            self._flagged = []

    @hookimpl
    def on_batch_end(self, run: Run, step: int, captured: Mapping[str, torch.Tensor]) -> None:
        if step % self.every_n_steps or not run.is_writer:
            return
        self._warn_nonfinite(run)  # what earlier steps' background tasks found
        tagged: list[tuple[str, torch.Tensor]] = []
        parameters = list(run.model.named_parameters())
        if self.weights:
            tagged.extend((run.tag("weights", name), p.detach()) for name, p in parameters)
        if self.grads:
            tagged.extend((run.tag("grads", name), p.grad) for name, p in parameters if p.grad is not None)
        for name in self._modules:
            tensor = captured.get(f"output:{name}")
            if tensor is not None:
                tagged.append((run.tag("activations", name or type(run.model).__name__), tensor))
        # Empty tensors have no histogram; sparse, complex and meta tensors are not binned.
        tagged = [
            (tag, t)
            for tag, t in tagged
            if t.numel() and t.layout == torch.strided and not t.is_complex() and t.device.type != "meta"
        ]
        if not tagged:
            return
        on_cpu = [i for i, (_, t) in enumerate(tagged) if _copied(t)]
        on_device = [i for i, (_, t) in enumerate(tagged) if not _copied(t)]
        if on_cpu:
            # At most one step's snapshots wait for the background thread at a time: with a
            # large CPU model a second copy of every weight is the most this plugin holds.
            self._wait_idle()
        with torch.no_grad():
            # CPU: the optimizer's next step changes the weights in place (and zero_grad the
            # gradients), so the values of this step are copied now (small tensors in one
            # concatenation per dtype) and binned in the background.
            snapshots = _pack_cpu([tagged[i][1] for i in on_cpu]) if on_cpu else ([], [])
            # Accelerators: the rows are computed here, enqueued on the current stream ahead of
            # any later in-place update; only the read back is left to the background thread.
            rows = _stacked_rows([tagged[i][1] for i in on_device], self.bins)
        streams = [torch.cuda.current_stream(r.device) if r.device.type == "cuda" else None for _, r in rows]
        with self._idle:
            self._pending += 1
        try:
            run.submit(self._write, run, step, [tag for tag, _ in tagged], on_cpu, snapshots, on_device, rows, streams)
        except BaseException:
            self._task_done()
            raise

    @hookimpl
    def on_epoch_end(self, run: Run) -> None:
        self._warn_nonfinite(run)

    @hookimpl
    def on_fit_end(self, run: Run) -> None:
        # The run closes next: every step's histograms are binned by then, so the warning
        # (if any) is given here, on the training thread, before the run ends.
        self._wait_idle()
        self._warn_nonfinite(run)

    @hookimpl
    def on_exception(self, run: Run) -> None:
        self._wait_idle()
        self._warn_nonfinite(run)

    def _write(
        self,
        run: Run,
        step: int,
        tags: list[str],
        on_cpu: list[int],
        snapshots: tuple[list[_CpuBatch], list[tuple[int, torch.Tensor]]],
        on_device: list[int],
        rows: list[tuple[list[int], torch.Tensor]],
        streams: list[torch.cuda.Stream | None],
    ) -> None:
        """Runs on the background thread: reads back or computes the rows, then writes the protobufs.

        Reading back device rows waits for the device here, never on the
        training thread; the copy runs on the stream that computed them.
        Tensors with non-finite values are recorded for the training thread
        to warn about (``warnings.warn`` from this thread would escape
        ``catch_warnings`` and turn into a background error under
        ``-W error``).
        """
        try:
            table = np.zeros((len(tags), _STATS + self.bins), dtype=np.float64)
            with torch.no_grad():  # grad mode is per thread
                for (indices, stacked), stream in zip(rows, streams, strict=True):
                    # The copy waits for the kernels that compute the rows: it runs on their stream.
                    with torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext():
                        table[[on_device[i] for i in indices]] = stacked.cpu().double().numpy()
                for k, row in _cpu_rows(*snapshots, self.bins).items():
                    table[on_cpu[k]] = row
            flagged = [
                f"{tags[i]} ({int(table[i, 5])} of {int(table[i, 2] + table[i, 5])})"
                for i in np.flatnonzero(table[:, 5])
            ]
            if flagged:
                with self._idle:
                    self._flagged.append((step, flagged))
            _write_rows(run.writer, step, tags, table, self.bins)
        finally:
            self._task_done()

    def _task_done(self) -> None:
        with self._idle:
            self._pending -= 1
            self._idle.notify_all()

    def _wait_idle(self) -> None:
        """Block until every task this plugin submitted has run (normally they have, long since)."""
        with self._idle:
            self._idle.wait_for(lambda: self._pending == 0)

    def _warn_nonfinite(self, run: Run) -> None:
        """On the training thread: warn (once per run) about the first step found with NaN/inf values."""
        with self._idle:
            found, self._flagged = self._flagged, []
        if not found:
            return
        step, flagged = found[0]
        more = f" and {len(flagged) - 3} more" if len(flagged) > 3 else ""
        run.warn_once(
            "histograms:nonfinite",
            f"tbhooks: histograms at step {step}: NaN/inf values in {', '.join(flagged[:3])}{more}; "
            f"they are left out of the histograms (a tensor with no finite value is not written)",
        )
