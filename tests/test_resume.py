"""A run resumed from Trainer.state_dict() continues its step and epoch without repeated steps."""

from __future__ import annotations

import copy

import torch
from _support import QUIET, classification_data, loader, mlp
from torch import nn

import tbhooks
from tbhooks.default_plugins.scalars import Scalars
from tbhooks.testing import read_events


class LossProbe:
    name = "loss_probe"

    def __init__(self) -> None:
        self.losses: dict[int, float] = {}

    @tbhooks.hookimpl
    def on_batch_end(self, step, loss):
        self.losses[step] = float(loss)


def make(logdir, *plugins, precision="32"):
    model = mlp()
    return tbhooks.Trainer(
        model,
        torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9),
        nn.functional.cross_entropy,
        logdir=logdir,
        precision=precision,
        plugins=[Scalars(every_n_steps=2), *plugins],
        disable=QUIET,
        autoload=False,
    )


def test_resume_after_a_crash_purges_the_steps_after_the_checkpoint(tmp_path):
    data = loader(classification_data(n=48))  # 6 steps an epoch
    first = make(tmp_path)
    first.fit(data, epochs=1)
    checkpoint = copy.deepcopy(first.state_dict())
    assert (checkpoint["step"], checkpoint["epoch"]) == (6, 1)
    first.fit(data, epochs=1)  # logs steps 7..12, then the process "dies" without a checkpoint

    probe = LossProbe()
    second = make(tmp_path, probe)
    second.load_state_dict(checkpoint)
    recorder = tbhooks.testing.HookRecorder().install(second)
    second.fit(data, epochs=2)
    assert [c["step"] for c in recorder.of("on_batch_end")][:2] == [7, 8]
    assert [c["epoch"] for c in recorder.of("on_epoch_start")] == [1, 2]
    assert (second.step, second.epoch) == (18, 3)

    events = read_events(tmp_path)
    steps = events.steps("train/loss")
    assert steps == [2, 4, 6, 8, 10, 12, 14, 16, 18], "no repeated or backward steps"
    assert events.steps("train/epoch_loss") == [6, 12, 18]
    # From step 8 on, the values are the resumed run's: the crashed run's steps 7..12 were purged.
    logged = dict(zip(steps, events.values("train/loss"), strict=True))
    for step in (8, 10, 12, 14):
        expected = probe.losses[step]  # train/loss is the loss of the logging step
        assert abs(logged[step] - expected) < 1e-5 * max(1.0, abs(expected)), step


def test_state_dict_restores_model_and_optimizer(tmp_path):
    data = loader(classification_data())
    first = make(tmp_path / "a")
    first.fit(data, epochs=1)
    second = make(tmp_path / "b")
    second.load_state_dict(first.state_dict())
    for p, q in zip(first.model.parameters(), second.model.parameters(), strict=True):
        assert torch.equal(p, q)
    assert second.optimizer.state_dict()["state"].keys() == first.optimizer.state_dict()["state"].keys()


def test_state_dict_restores_the_grad_scaler(tmp_path):
    data = loader(classification_data(n=48))  # 6 steps an epoch
    first = make(tmp_path / "a", precision="16")
    first.fit(data, epochs=1)
    first.scaler.update(1024.0)  # as after overflows: the resumed run must not restart at the initial 65536
    checkpoint = first.state_dict()
    assert checkpoint["scaler"]["scale"] == 1024.0

    second = make(tmp_path / "b", precision="16")
    second.load_state_dict(checkpoint)
    assert second.scaler.get_scale() == 1024.0
    assert second.scaler.state_dict() == first.scaler.state_dict()
    second.fit(data, epochs=1)
    assert second.scaler.get_scale() == 1024.0

    # A state saved without a scaler (at 32 bits) leaves the initial scale; one saved with it loads at 32 bits.
    third = make(tmp_path / "c", precision="16")
    third.load_state_dict(make(tmp_path / "d").state_dict())
    assert third.scaler.get_scale() == 65536.0
    make(tmp_path / "e").load_state_dict(checkpoint)
