"""Scalars: the training loss, learning rates and the epoch and evaluation metrics."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from tbhooks.default_plugins.common import check_bool, check_int
from tbhooks.markers import hookimpl

if TYPE_CHECKING:
    from collections.abc import Mapping

    from tbhooks.run import Run


class Scalars:
    """Log losses, learning rates and metrics as scalars, against the global step.

    Tags: ``train/loss`` (the batch loss, averaged over ranks) and ``train/lr`` (``train/lr/group<i>`` with
    several param groups) every ``every_n_steps``-th step, the loss read back only then; ``train/epoch_loss``
    (the epoch's mean batch loss) at epoch end; ``eval/<metric>`` at each evaluation.

    :param every_n_steps: the interval of ``train/loss`` and ``train/lr`` (default 50).
    :param lr: log learning rates (default True).
    """

    name = "scalars"

    def __init__(self, every_n_steps: int = 50, lr: bool = True) -> None:
        self.every_n_steps = check_int("Scalars", "every_n_steps", every_n_steps, minimum=1)
        self.lr = check_bool("Scalars", "lr", lr)

    def batch_end_due(self, step: int) -> bool:
        """The schedule: every ``every_n_steps``-th step."""
        return step % self.every_n_steps == 0

    @hookimpl
    def on_batch_end(self, run: Run, step: int, loss: torch.Tensor | None) -> None:
        if loss is not None:
            value = loss.float().mean()
            if run.world_size > 1 and torch.distributed.is_initialized():
                torch.distributed.all_reduce(value)  # every rank logs at the same steps
                value = value / run.world_size
            number = float(value)  # the one read-back, on a logging step
            run.writer.add_scalar("train/loss", number, step)
            run.check_finite("train/loss", number)
        if self.lr and run.optimizer is not None:
            groups = run.optimizer.param_groups
            for index, group in enumerate(groups):
                tag = "train/lr" if len(groups) == 1 else f"train/lr/group{index}"
                run.writer.add_scalar(tag, float(group["lr"]), step)

    @hookimpl
    def on_epoch_end(self, run: Run, step: int, metrics: Mapping[str, float]) -> None:
        if "loss" in metrics:
            run.writer.add_scalar("train/epoch_loss", metrics["loss"], step)

    @hookimpl
    def on_eval(self, run: Run, step: int, metrics: Mapping[str, float]) -> None:
        for name, value in metrics.items():
            run.writer.add_scalar(run.tag("eval", name), value, step)
