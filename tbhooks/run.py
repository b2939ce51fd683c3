"""The run: what every plugin is handed, and the one writer of a log directory.

A :class:`Run` is created by :func:`tbhooks.attach` (the Trainer calls it
too) and passed to every event as ``run``.  Plugins never open their own
``SummaryWriter``: they write through ``run.writer``, which on ranks other
than 0 is a writer that does nothing, so a plugin needs no rank checks to be
correct, only to skip work (``run.is_writer``).
"""

from __future__ import annotations

import functools
import logging
import math
import os
import queue
import re
import sys
import tempfile
import threading
import traceback
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from tbhooks.accumulate import DeviceSum
from tbhooks.errors import NonFiniteLossWarning, TbhooksWarning

if TYPE_CHECKING:
    from collections.abc import Callable

    from torch import nn
    from torch.optim import Optimizer
    from torch.utils.tensorboard import SummaryWriter

    from tbhooks.render_worker import RenderProcess

log = logging.getLogger("tbhooks")

_UNSAFE_TAG = re.compile(r"[^A-Za-z0-9_.\-/]+")


def safe_tag(*parts: object) -> str:
    """Join ``parts`` with ``/`` into a tag TensorBoard shows as written.

    Runs of characters outside ``[A-Za-z0-9_.-/]`` (spaces, tabs, newlines,
    quotes, unicode) become one ``_``.  Every built-in plugin names its tags
    through this function, so odd class or module names are made safe the
    same way everywhere.
    """
    return "/".join(_UNSAFE_TAG.sub("_", str(p)).strip("/") or "_" for p in parts)


@functools.lru_cache(maxsize=4096)
def _cached_tag(parts: tuple[str, ...]) -> str:
    return safe_tag(*parts)


def distributed_rank() -> tuple[int, int]:
    """``(global rank, world size)`` from ``torch.distributed`` or, before it is
    initialised, from the ``RANK``/``WORLD_SIZE`` variables torchrun sets."""
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


class NullWriter:
    """The writer of ranks other than 0: accepts every ``add_*`` call and writes nothing."""

    def __init__(self, logdir: str) -> None:
        self.log_dir = logdir

    def get_logdir(self) -> str:
        return self.log_dir

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass

    def _noop(self, *args: Any, **kwargs: Any) -> None:
        pass

    add_scalar = add_scalars = add_histogram = add_histogram_raw = add_image = add_images = _noop
    add_figure = add_text = add_graph = add_embedding = add_pr_curve = add_pr_curve_raw = _noop
    add_hparams = add_custom_scalars = add_mesh = add_audio = add_video = _noop


def check_logdir(logdir: str | os.PathLike[str]) -> Path:
    """Create ``logdir`` and prove it writable, before any training happens.

    Raises ``ValueError`` naming the directory when it cannot be written, so
    a run never trains for hours and then loses everything it logged.
    """
    if not isinstance(logdir, (str, os.PathLike)):
        raise TypeError(f"logdir expects a path (str or os.PathLike), got {type(logdir).__name__}")
    path = Path(logdir)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as exc:
        raise ValueError(f"logdir={str(path)!r} cannot be written: {exc.strerror or exc}") from None
    return path


MAX_QUEUE = 256
"""Events the writer's queue holds before an ``add_*`` call waits for its thread (SummaryWriter's default
is 10: a step's histograms, written from the background thread, would then make the training thread's
next scalar wait for the disk)."""


def open_writer(logdir: Path, *, rank: int, flush_secs: float, purge_step: int | None) -> SummaryWriter:
    """The run's one writer: a real ``SummaryWriter`` on rank 0, a :class:`NullWriter` elsewhere."""
    if rank != 0:
        return NullWriter(str(logdir))  # type: ignore[return-value]
    from torch.utils.tensorboard import SummaryWriter

    from tbhooks._records import direct_records

    writer = SummaryWriter(log_dir=str(logdir), max_queue=MAX_QUEUE, flush_secs=flush_secs, purge_step=purge_step)
    direct_records(writer)
    return writer


class _Background:
    """One worker thread that runs plugin work off the training thread, in order.

    Figures, PNG encoding and PR-curve tables are produced here.  ``drain``
    waits until every submitted task ran; the core calls it before closing the
    writer, so nothing submitted is lost, and never in the middle of a run, so
    the training thread never waits for a figure.
    """

    def __init__(self) -> None:
        self._queue: queue.Queue[tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]] | None] = queue.Queue(
            maxsize=64
        )
        # Errors are only collected here; the training thread reports them (warnings,
        # unregistering the plugin) when it next drains, never from this thread.
        self.errors: list[tuple[Callable[..., Any], BaseException]] = []
        self._thread: threading.Thread | None = None

    def submit(self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._work, name="tbhooks-background", daemon=True)
            self._thread.start()
        self._queue.put((fn, args, kwargs))

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            try:
                if item is None:
                    return
                fn, args, kwargs = item
                try:
                    fn(*args, **kwargs)
                except Exception as exc:
                    self.errors.append((fn, exc))
            finally:
                self._queue.task_done()

    def drain(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            self._queue.join()

    def stop(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()
        self._thread = None


class Run:
    """Everything a plugin is handed about the run in progress.

    Attributes plugins read: ``writer``, ``logdir``, ``model`` (unwrapped from
    DistributedDataParallel), ``optimizer`` (or ``None``), ``class_names`` (or
    ``None``), ``hparams``, ``rank``, ``world_size``, ``is_writer``, ``step``,
    ``epoch``, ``device``, ``last_inputs``.  Methods: :meth:`submit`, :meth:`render_image`, :meth:`gather`,
    :meth:`class_scores`, :meth:`request_stop`, :meth:`warn_once`,
    :meth:`info_once`, :meth:`tag`.
    """

    def __init__(
        self,
        *,
        writer: SummaryWriter,
        logdir: Path,
        model: nn.Module,
        optimizer: Optimizer | None,
        class_names: list[str] | None,
        hparams: dict[str, Any],
        rank: int,
        world_size: int,
    ) -> None:
        self.writer = writer
        self.logdir = logdir
        self.model = model
        self.optimizer = optimizer
        self.class_names = class_names
        self.hparams = hparams
        self.rank = rank
        self.world_size = world_size
        self.step = 0
        self.epoch = 0
        self.train_losses = DeviceSum()
        """The current epoch's training batch losses, kept on the device (reset at each epoch start).

        ``total()`` and ``count`` give the sum and the number of losses so far;
        the scalars plugin logs interval means as differences of totals, so no
        plugin has to see every step."""
        self.last_inputs: Any = None
        """The inputs of the latest training batch of this epoch (a reference, not a copy), or ``None``.

        Set on every step without raising an event, so a plugin that wants the
        epoch's last batch at ``on_epoch_end`` need not be called on every batch."""
        self.stop_reason: str | None = None
        self.stop_on_nonfinite = False
        self._said: set[str] = set()
        self._background = _Background()
        self._render: RenderProcess | None = None  # the render worker, started by the first render_image

    @property
    def is_writer(self) -> bool:
        """Whether this process writes (global rank 0); other ranks can skip expensive work."""
        return self.rank == 0

    @property
    def device(self) -> torch.device:
        """The device of the model's first parameter (CPU for a model without parameters)."""
        for parameter in self.model.parameters():
            return parameter.device
        return torch.device("cpu")

    # -- helpers for plugins ------------------------------------------------

    def tag(self, *parts: object) -> str:
        """A safe tag from ``parts``; see :func:`safe_tag`."""
        if all(type(part) is str for part in parts):
            # Plugins ask for the same tags at every logging step (a histogram step asks for dozens).
            return _cached_tag(parts)  # type: ignore[arg-type]
        return safe_tag(*parts)

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> None:
        """Run ``fn(*args, **kwargs)`` on the run's background thread, in submission order.

        Use it for work the training thread must not wait for: rendering a
        figure, encoding a PNG, building a PR-curve table.  Move tensors to
        the CPU before submitting (on steps that log, a sync is allowed).
        Errors are reported like errors in hooks, and the plugin that owns
        ``fn`` (when ``fn`` is one of its bound methods) is disabled.
        """
        self._background.submit(fn, args, kwargs)

    def drain(self, wait: bool = True) -> list[tuple[Callable[..., Any], BaseException]]:
        """Return the errors background tasks and renders raised since the last call.

        With ``wait`` (the default) first wait until every task given to
        :meth:`submit` has run and every :meth:`render_image` is written;
        without it, return at once.
        """
        if wait:
            if self._render is not None:
                self._render.drain()
            self._background.drain()
        errors, self._background.errors = self._background.errors, []
        if self._render is not None:
            errors += self._render.take_errors()
        return errors

    def render_image(self, tag: str, step: int, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> None:
        """Draw an image off the training thread, in a worker process, and write it as image ``tag`` at ``step``.

        ``fn(*args, **kwargs)`` runs in the run's render worker process and
        returns a ``uint8`` numpy array ``[H, W, 3]`` (RGB), ``[H, W, 4]``
        (RGBA) or ``[H, W]`` (grey); the worker encodes the PNG and the event
        is written as ``writer.add_image(tag, pixels, step, dataformats="HWC")``
        would write it.  Unlike :meth:`submit`, drawing never holds the
        training process's GIL: use it for matplotlib figures.

        ``fn`` must be an importable module-level function (not a lambda, a
        method, or a function of the ``__main__`` script) and its arguments
        picklable: numpy arrays, lists, strings, numbers.  Move tensors to CPU
        numpy first (on the logging step); a torch tensor is refused with a
        ``TypeError``, raised here, as is anything that does not pickle.
        Images are written in request order; errors in ``fn`` are reported like
        errors in hooks, against the plugin whose method called this, which is
        then disabled.  On ranks other than 0 (``not is_writer``) it does nothing.
        """
        if not self.is_writer:
            return
        from tbhooks.render_worker import calling_object

        owner = calling_object(sys._getframe(1), skip=self)
        self._renderer().submit(fn, args, kwargs, tag=tag, step=step, writer=self.writer, owner=owner)

    def start_render_worker(self, *preload: str) -> None:
        """Start the render worker now and import the modules ``preload`` in it.

        A plugin that will call :meth:`render_image` calls this in
        ``on_fit_start``: the worker's start-up (its imports take seconds)
        then overlaps with training instead of delaying the first image and
        the run's close.  A preloaded module's ``tbhooks_warm_up()`` function,
        if it has one, is then called in the worker (draw a tiny figure there:
        a process's first figure costs far more than later ones).  Does
        nothing on ranks other than 0.
        """
        if not self.is_writer:
            return
        self._renderer().start(preload)

    def warm_up_render(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> None:
        """Run ``fn(*args, **kwargs)`` once in the render worker and drop the image it returns.

        For a plugin that knows in ``on_fit_start`` what it will draw (the
        class names of a confusion matrix, say): a drawing function that
        keeps templates in the worker builds them now, while training runs,
        instead of in the first real image, which a short run's close waits
        for.  ``fn`` and its arguments follow :meth:`render_image`'s rules;
        an error in ``fn`` is not reported (the real call reports it), and
        neither :meth:`drain` nor the run's close waits for a warm-up.  Does
        nothing on ranks other than 0, or where images are drawn without a
        worker process.
        """
        if not self.is_writer:
            return
        from tbhooks.render_worker import WARM_UP_TAG

        self._renderer().submit(fn, args, kwargs, tag=WARM_UP_TAG, step=self.step, writer=None)

    def _renderer(self) -> RenderProcess:
        """The run's render worker (its parent's side), created on first use; it starts the process."""
        from tbhooks.render_worker import RenderProcess

        if self._render is None:
            self._render = RenderProcess(fallback=self._background.submit)
        return self._render

    def stop_background(self) -> None:
        """Stop the background thread, once every image asked of the render worker is written; the core
        calls it when the run closes, before it closes the writer.

        Call :meth:`drain` first: what is still queued is finished, but its
        errors would no longer be reported.
        """
        try:
            if self._render is not None:
                self._render.drain()
        finally:
            self._background.stop()

    def stop_render(self) -> None:
        """Let the render worker process exit; the core calls it when the run closes, after the writer.

        After the writer, because the worker's exit wakes three of this
        process's threads and keeps another core busy for a few milliseconds
        (an interpreter that imported matplotlib tearing down): where cores
        were short, closing the writer meanwhile (which waits for its own
        thread) took up to 5 ms instead of 0.3.
        """
        if self._render is not None:
            self._render.close()

    def gather(self, tensor: torch.Tensor) -> torch.Tensor:
        """Concatenate ``tensor`` along dim 0 over every rank (rank order).

        Every rank must call it at the same point (it is a collective); the
        sizes along dim 0 may differ between ranks.  Without
        ``torch.distributed`` it returns ``tensor`` unchanged.
        """
        if self.world_size == 1 or not torch.distributed.is_initialized():
            return tensor
        dist = torch.distributed
        size = torch.tensor([tensor.shape[0]], device=tensor.device)
        sizes = [torch.zeros_like(size) for _ in range(self.world_size)]
        dist.all_gather(sizes, size)
        longest = int(max(s.item() for s in sizes))
        padded = tensor.new_zeros((longest, *tensor.shape[1:]))
        padded[: tensor.shape[0]] = tensor
        parts = [torch.zeros_like(padded) for _ in range(self.world_size)]
        dist.all_gather(parts, padded.contiguous())
        return torch.cat([p[: int(s.item())] for p, s in zip(parts, sizes, strict=True)])

    def class_scores(self, outputs: Any, targets: Any, *, who: str) -> tuple[torch.Tensor, torch.Tensor] | None:
        """``(scores [N, C], labels [N])`` when this is a classification batch, else ``None``.

        Classification means: ``outputs`` a float tensor of shape ``[N, C]``
        with ``C >= 2`` and ``targets`` an integer tensor of shape ``[N]``
        with every label in ``[0, C)``.  Otherwise the plugin named ``who``
        gets one info line (per reason) and should skip.  Checking the label
        range reads two numbers from the device: call it on logging steps only.
        """
        if not (
            isinstance(outputs, torch.Tensor)
            and outputs.ndim == 2
            and outputs.shape[1] >= 2
            and outputs.is_floating_point()
            and isinstance(targets, torch.Tensor)
            and targets.ndim == 1
            and not targets.is_floating_point()
            and targets.shape[0] == outputs.shape[0]
        ):
            self.info_once(
                f"{who}:not-classification",
                f"tbhooks: {who} skipped: outputs are not class scores [N, C] with integer targets [N]",
            )
            return None
        if targets.numel():
            low, high = torch.aminmax(targets)
            classes = outputs.shape[1]
            if int(low) < 0 or int(high) >= classes:
                self.warn_once(
                    "targets-range",
                    f"tbhooks: targets hold labels outside [0, {classes}) (min {int(low)}, max {int(high)}) "
                    f"for outputs with {classes} classes; accuracy and the classification plugins skip them",
                )
                return None
        return outputs, targets.long()

    def request_stop(self, reason: str) -> None:
        """Ask the loop to stop after the current batch; ``on_fit_end`` still fires.

        The Trainer checks after every batch; a hand-written loop reads
        ``hooks.should_stop``.
        """
        if self.stop_reason is None:
            self.stop_reason = reason

    def check_finite(self, what: str, value: float) -> None:
        """Warn once when a logged loss ``what`` is NaN or infinite.

        The value is still logged as is; with ``stop_on_nonfinite=True`` the
        loop is also asked to stop (:meth:`request_stop`).  Plugins call it
        with values they already read back, so it never adds a device sync.
        """
        if math.isfinite(value):
            return
        stopping = "; stopping the run (stop_on_nonfinite=True)" if self.stop_on_nonfinite else ""
        self.warn_once(
            "nonfinite-loss",  # once per run: the first non-finite value is the news
            f"tbhooks: {what} is {value} at step {self.step}; it is logged as is{stopping}",
            NonFiniteLossWarning,
        )
        if self.stop_on_nonfinite:
            self.request_stop(f"{what} is {value} at step {self.step}")

    def warn_once(self, key: str, message: str, category: type[Warning] = TbhooksWarning) -> None:
        """Emit ``message`` as a warning the first time ``key`` is seen in this run."""
        if key not in self._said:
            self._said.add(key)
            warnings.warn(message, category, stacklevel=2)

    def info_once(self, key: str, message: str) -> None:
        """Log ``message`` at INFO on the ``tbhooks`` logger the first time ``key`` is seen."""
        if key not in self._said:
            self._said.add(key)
            log.info(message)


def format_exception(exc: BaseException) -> str:
    """The traceback of ``exc`` as text, for fault reports."""
    return "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)).rstrip()
