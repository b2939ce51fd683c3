"""The run: what every plugin is handed as ``run``, and nothing else.

Plugins write through ``run.writer``, never their own ``SummaryWriter``; on ranks other than 0 it does
nothing, so rank checks only skip work (``run.is_writer``).  :class:`tbhooks.Hooks` owns its lifecycle.
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

    Each run of characters outside ``[A-Za-z0-9_.-/]`` becomes one ``_``; built-in plugins name every tag
    through it, so odd class or module names are made safe the same way everywhere.
    """
    return "/".join(_UNSAFE_TAG.sub("_", str(p)).strip("/") or "_" for p in parts)


class Run:
    """Everything a plugin is handed about the run in progress; made by :func:`tbhooks.attach`.

    Attributes: ``writer``, ``logdir``, ``model`` (unwrapped from DistributedDataParallel and
    ``torch.compile``), ``compiled``, ``optimizer`` and ``class_names`` (or ``None``), ``hparams``, ``rank``,
    ``world_size``, ``is_writer``, ``step``, ``epoch``, ``device``, and the helper methods below.
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

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> None:
        """Run ``fn(*args, **kwargs)`` on the run's background thread, in submission order.

        For work training must not wait for (encoding images, writing files); move tensors to the CPU first.
        An error disables the plugin ``fn`` is a bound method of, like an error in a hook; close waits for all.
        """
        self._background.submit(getattr(fn, "__self__", fn), fn, args, kwargs)

    def render_image(
        self, plugin: object, tag: str, step: int, fn: Callable[..., Any], /, *args: Any, **kwargs: Any
    ) -> None:
        """Draw a matplotlib figure in the run's worker process and write it as image ``tag`` at ``step``.

        ``fn``, an importable module-level function, returns a ``Figure()`` built without pyplot.
        Its arguments must pickle (numpy arrays, plain values): a tensor or lambda is a ``TypeError`` here.
        An error in ``fn`` disables ``plugin`` (the caller).  Does nothing on ranks other than 0.
        """
        if self.is_writer:
            self._renderer().submit(plugin, tag, step, fn, args, kwargs)

    def start_render_worker(self, *preload: str) -> None:
        """Start the render worker now and import the modules ``preload`` in it (calling their ``tbhooks_warm_up()``).

        Call it in ``on_fit_start`` so matplotlib's import overlaps training.  Does nothing on ranks other than 0.
        """
        if self.is_writer:
            self._renderer().start(preload)

    def gather(self, tensor: torch.Tensor) -> torch.Tensor:
        """Concatenate ``tensor`` along dim 0 over every rank, in rank order; sizes along dim 0 may differ.

        A collective: every rank must call it.  Without ``torch.distributed`` it returns ``tensor`` unchanged.
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

    def class_scores(self, outputs: Any, targets: Any, *, who: str) -> tuple[torch.Tensor, torch.Tensor] | None:
        """``(scores [N, C], labels [N])`` when this is a classification batch, else ``None``.

        That is float ``outputs [N, C]`` with ``C >= 2`` and integer ``targets [N]`` in ``[0, C)``; otherwise
        plugin ``who`` gets one message per reason and should skip.  Reads the device: call on logging steps.
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

    def request_stop(self, reason: str) -> None:
        """Ask the loop to stop after the current batch; ``on_fit_end`` still fires (see ``hooks.should_stop``)."""
        if self.stop_reason is None:
            self.stop_reason = reason

    def check_finite(self, what: str, value: float) -> None:
        """Warn once when a logged loss ``what`` is NaN or infinite; it is still logged.

        With ``stop_on_nonfinite=True`` the loop is also asked to stop.  ``value`` is already read back: no sync.
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
