"""The run: what every plugin is handed as ``run``, and nothing else.

A :class:`Run` is made by :func:`tbhooks.attach` (the Trainer calls it too).
Plugins never open their own ``SummaryWriter``: they write through
``run.writer``, which on ranks other than 0 is a writer that does nothing, so
a plugin needs no rank checks to be correct, only to skip work
(``run.is_writer``).  The run's lifecycle (draining background work, closing
the writer, stopping the render worker) belongs to :class:`tbhooks.Hooks`.
"""

from __future__ import annotations

import logging
import math
import re
import warnings
from typing import TYPE_CHECKING, Any

import torch

from tbhooks.errors import NonFiniteLossWarning, TbhooksWarning

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from torch import nn
    from torch.optim import Optimizer
    from torch.utils.tensorboard import SummaryWriter

    from tbhooks.background import Background
    from tbhooks.render import Renderer

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


class Run:
    """Everything a plugin is handed about the run in progress.

    Attributes: ``writer``, ``logdir``, ``model`` (unwrapped from
    DistributedDataParallel and ``torch.compile``), ``compiled``,
    ``optimizer`` (or ``None``), ``class_names`` (or ``None``), ``hparams``,
    ``rank``, ``world_size``, ``is_writer``, ``step``, ``epoch``, ``device``.  Helpers: :meth:`submit`,
    :meth:`render_image`, :meth:`start_render_worker`, :meth:`gather`,
    :meth:`class_scores`, :meth:`request_stop`, :meth:`check_finite`,
    :meth:`warn_once`, :meth:`info_once`, :meth:`tag`.
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
        background: Background,
        renderer: Callable[[], Renderer],
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
        self.compiled: bool | None = None
        """Whether the model runs compiled code (``torch.compile``); known after its first forward pass."""
        self.stop_reason: str | None = None
        self.stop_on_nonfinite = False
        self._said: set[str] = set()
        self._background = background
        self._renderer = renderer

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

    def tag(self, *parts: object) -> str:
        """A safe tag from ``parts``; see :func:`safe_tag`."""
        return safe_tag(*parts)

    # -- work off the training thread -----------------------------------------

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> None:
        """Run ``fn(*args, **kwargs)`` on the run's background thread, in submission order.

        For work the training thread must not wait for: encoding an image,
        building a PR-curve table, writing files.  Move tensors to the CPU
        before submitting (on steps that log, a sync is allowed).  An error is
        reported like an error in a hook, against the plugin ``fn`` is a
        bound method of, which is then disabled; the run's close waits for
        every task.
        """
        self._background.submit(getattr(fn, "__self__", fn), fn, args, kwargs)

    def render_image(
        self, plugin: object, tag: str, step: int, fn: Callable[..., Any], /, *args: Any, **kwargs: Any
    ) -> None:
        """Draw a matplotlib figure in the run's worker process and write it as image ``tag`` at ``step``.

        ``fn(*args, **kwargs)`` runs in the worker and returns a
        ``matplotlib.figure.Figure`` (build it with ``Figure()``, never
        pyplot); the worker saves it as PNG and the image reaches the IMAGES
        dashboard.  ``plugin`` is the calling plugin (``self``): an error in
        ``fn`` is reported against it, which is then disabled.

        ``fn`` must be an importable module-level function, and its arguments
        picklable numpy arrays and plain values: a torch tensor, a lambda or
        anything that does not pickle is a ``TypeError`` raised here.  Does
        nothing on ranks other than 0.
        """
        if self.is_writer:
            self._renderer().submit(plugin, tag, step, fn, args, kwargs)

    def start_render_worker(self, *preload: str) -> None:
        """Start the render worker now and import the modules ``preload`` in it.

        Call it in ``on_fit_start``: the worker's imports (matplotlib) then
        overlap with training instead of delaying the first figure.  A
        preloaded module's ``tbhooks_warm_up()`` function, if it has one, is
        called in the worker once.  Does nothing on ranks other than 0.
        """
        if self.is_writer:
            self._renderer().start(preload)

    # -- distributed ----------------------------------------------------------

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
        counts = [int(s.item()) for s in sizes]
        padded = tensor.new_zeros((max(counts), *tensor.shape[1:]))
        padded[: tensor.shape[0]] = tensor
        parts = [torch.zeros_like(padded) for _ in range(self.world_size)]
        dist.all_gather(parts, padded.contiguous())
        return torch.cat([part[:count] for part, count in zip(parts, counts, strict=True)])

    # -- classification -------------------------------------------------------

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
            low, high = (int(v) for v in torch.aminmax(targets))
            classes = outputs.shape[1]
            if low < 0 or high >= classes:
                self.warn_once(
                    "targets-range",
                    f"tbhooks: targets hold labels outside [0, {classes}) (min {low}, max {high}) "
                    f"for outputs with {classes} classes; accuracy and the classification plugins skip them",
                )
                return None
        return outputs, targets.long()

    # -- control and messages -------------------------------------------------

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
