"""Scalars: the training loss, learning rates and the epoch and evaluation metrics.

Tags (all against the global step):

``train/loss``
    mean of the batch losses since the last point, every ``every_n_steps``
    steps and at each epoch end (so short epochs still get points);
``train/lr`` (one param group) or ``train/lr/group<i>``
    each param group's learning rate, at the same steps;
``train/epoch_loss``
    mean batch loss of the epoch, at epoch end;
``eval/<metric>``
    every evaluation metric (``eval/loss``, ``eval/accuracy``), at each evaluation.

The batch losses stay on the device in ``run.train_losses`` (the core keeps
them; :class:`tbhooks.accumulate.DeviceSum` sums references in one operation);
the interval mean is read back only on the steps that log.  The plugin has a
``batch_end_due`` method, so on steps between points the core does not even
raise ``on_batch_end`` for it.  A logging step keeps its values with the
step and the time; their events are built and go to the writer together, at most
:data:`WRITE_SECS` (1 s) after the first of them, and at every epoch end,
evaluation and the run's end (an exception included): TensorBoard shows a
point about a second later than it would, and a process killed outright
(SIGKILL) loses at most that second's points.
Under torch.distributed the running mean is averaged over ranks.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import torch

from tbhooks._records import scalars_summary, summary_event, write_events
from tbhooks.default_plugins._options import check_bool, check_int
from tbhooks.markers import hookimpl

if TYPE_CHECKING:
    from collections.abc import Mapping

    from tbhooks.run import Run


WRITE_SECS = 1.0
"""How long the training-loss points wait before they are handed to the writer, together."""


class Scalars:
    """Log losses, learning rates and metrics as scalars.

    :param every_n_steps: the log interval of ``train/loss`` and ``train/lr`` (default 50).
    :param lr: log learning rates (default True).
    """

    name = "scalars"

    def __init__(self, every_n_steps: int = 50, lr: bool = True) -> None:
        self.every_n_steps = check_int("Scalars", "every_n_steps", every_n_steps, minimum=1)
        self.lr = check_bool("Scalars", "lr", lr)
        # Where run.train_losses stood at the last point (its total, read back then, and its
        # count): the next point is the mean of what was added since.
        self._mark_total = 0.0
        self._mark_count = 0
        # Logging steps' points (step, wall time, values), written together at most WRITE_SECS
        # after the first of them (and at every epoch end, evaluation and the run's end).
        self._points: list[tuple[int, float, dict[str, float]]] = []
        self._since = 0.0

    def batch_end_due(self, step: int) -> bool:
        """The core raises ``on_batch_end`` on a step only when some plugin is due (the fast path)."""
        return step % self.every_n_steps == 0

    @hookimpl
    def on_fit_start(self) -> None:
        self._points = []

    @hookimpl
    def on_epoch_start(self) -> None:
        self._mark_total, self._mark_count = 0.0, 0

    @hookimpl
    def on_batch_end(self, run: Run, step: int) -> None:
        if step % self.every_n_steps == 0:
            self._log(run, step)

    def _log(self, run: Run, step: int) -> None:
        # A logging step runs between cold caches, where each operation costs microseconds: the
        # total is read back once (on the CPU, the losses one by one as floats; on a device, one
        # stack, sum and read) and the interval mean is plain float arithmetic.  The values are
        # kept with the step and the time; their event (a simple_value per tag, what one
        # add_scalar per tag writes, in one event) is built when the kept points are written.
        values: dict[str, float] = {}
        losses = run.train_losses
        count = losses.count
        total_value = losses.value() if count > self._mark_count else None
        if total_value is not None:
            value = (total_value - self._mark_total) / (count - self._mark_count)
            if run.world_size > 1 and torch.distributed.is_initialized():
                mean = torch.tensor(value, dtype=torch.float64, device=run.device)
                torch.distributed.all_reduce(mean)
                value = float(mean) / run.world_size
            run.check_finite("train/loss", value)
            values["train/loss"] = value
            self._mark_total, self._mark_count = total_value, count
        if self.lr and run.optimizer is not None:
            groups = run.optimizer.param_groups
            for index, group in enumerate(groups):
                values["train/lr" if len(groups) == 1 else f"train/lr/group{index}"] = float(group["lr"])
        if run.is_writer and values:
            # Kept, not written: a logging step runs between cold caches, where building the
            # event and the hand-off to the writer's thread (its queue's lock, waking it) took
            # most of its time.
            points = self._points
            if not points:
                self._since = time.monotonic()
            points.append((step, time.time(), values))
            if time.monotonic() - self._since >= WRITE_SECS:
                self._write(run)

    def _write(self, run: Run) -> None:
        """Hand the kept points to the writer, in order, at once (one event each)."""
        if self._points:
            points, self._points = self._points, []
            write_events(run.writer, [summary_event(scalars_summary(v), step, wall) for step, wall, v in points])

    @hookimpl
    def on_epoch_end(self, run: Run, step: int, metrics: Mapping[str, float]) -> None:
        if run.train_losses.count > self._mark_count:
            self._log(run, step)
        self._write(run)
        if "loss" in metrics:
            run.writer.add_scalar("train/epoch_loss", metrics["loss"], step)

    @hookimpl
    def on_eval(self, run: Run, step: int, metrics: Mapping[str, float]) -> None:
        self._write(run)
        for name, value in metrics.items():
            run.writer.add_scalar(run.tag("eval", name), value, step)

    @hookimpl
    def on_fit_end(self, run: Run) -> None:
        self._write(run)

    @hookimpl
    def on_exception(self, run: Run) -> None:
        self._write(run)
