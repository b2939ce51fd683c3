"""Scalars: the training loss, learning rates and the epoch and evaluation metrics.

Tags (all against the global step):

``train/loss``
    the batch loss of every ``every_n_steps``-th step (averaged over ranks);
``train/lr`` (one param group) or ``train/lr/group<i>``
    each param group's learning rate, at the same steps;
``train/epoch_loss``
    the mean batch loss of the epoch, at epoch end (so short epochs still get a point);
``eval/<metric>``
    every evaluation metric (``eval/loss``, ``eval/accuracy``), at each evaluation.

The plugin declares its schedule (``batch_end_due``), so on the steps in
between the core does not raise ``on_batch_end`` for it, and the loss is
read back only on the steps it logs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from tbhooks.default_plugins.common import check_bool, check_int
from tbhooks.markers import hookimpl

if TYPE_CHECKING:
    from collections.abc import Mapping

    from tbhooks.run import Run


class Scalars:
    """Log losses, learning rates and metrics as scalars.

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
