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

The batch losses stay on the device (:class:`tbhooks.accumulate.DeviceSum`
keeps references and sums them in one operation); the mean is read back only
on the steps that log, so steps in between cost a list append and no sync.
Under torch.distributed the running mean is averaged over ranks.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from tbhooks.accumulate import DeviceSum
from tbhooks.default_plugins._options import check_bool, check_int
from tbhooks.markers import hookimpl

if TYPE_CHECKING:
    from collections.abc import Mapping

    from tbhooks.run import Run


class Scalars:
    """Log losses, learning rates and metrics as scalars.

    :param every_n_steps: the log interval of ``train/loss`` and ``train/lr`` (default 50).
    :param lr: log learning rates (default True).
    """

    name = "scalars"

    def __init__(self, every_n_steps: int = 50, lr: bool = True) -> None:
        self.every_n_steps = check_int("Scalars", "every_n_steps", every_n_steps, minimum=1)
        self.lr = check_bool("Scalars", "lr", lr)
        self._losses = DeviceSum()

    @hookimpl
    def on_epoch_start(self) -> None:
        self._losses.reset()

    @hookimpl
    def on_batch_end(self, run: Run, step: int, loss: torch.Tensor | None) -> None:
        if loss is not None:
            self._losses.add(loss)
        if step % self.every_n_steps == 0:
            self._log(run, step)

    def _log(self, run: Run, step: int) -> None:
        mean = self._losses.mean()
        if mean is not None:
            if run.world_size > 1 and torch.distributed.is_initialized():
                torch.distributed.all_reduce(mean)
                mean = mean / run.world_size
            value = float(mean)
            run.check_finite("train/loss", value)
            run.writer.add_scalar("train/loss", value, step)
        self._losses.reset()
        if self.lr and run.optimizer is not None:
            groups = run.optimizer.param_groups
            for index, group in enumerate(groups):
                tag = "train/lr" if len(groups) == 1 else f"train/lr/group{index}"
                run.writer.add_scalar(tag, float(group["lr"]), step)

    @hookimpl
    def on_epoch_end(self, run: Run, step: int, metrics: Mapping[str, float]) -> None:
        if self._losses.count:
            self._log(run, step)
        if "loss" in metrics:
            run.writer.add_scalar("train/epoch_loss", metrics["loss"], step)

    @hookimpl
    def on_eval(self, run: Run, step: int, metrics: Mapping[str, float]) -> None:
        for name, value in metrics.items():
            run.writer.add_scalar(run.tag("eval", name), value, step)
