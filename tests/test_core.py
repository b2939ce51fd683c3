"""The core: events reach plugins with the documented arguments, and scalars are read back exactly."""

from __future__ import annotations

import pytest
import torch
from _support import QUIET, classification_data, loader, mlp
from torch import nn

import tbhooks
from tbhooks.default_plugins.scalars import Scalars
from tbhooks.testing import read_events


class LossProbe:
    """Keeps every batch loss it is handed (reading them is fine in a test)."""

    name = "loss_probe"

    def __init__(self) -> None:
        self.losses: list[tuple[int, float]] = []

    @tbhooks.hookimpl
    def on_batch_end(self, step, loss):
        self.losses.append((step, float(loss)))


def test_train_loss_is_the_loss_of_each_logging_step_and_the_epoch_mean(tmp_path):
    probe = LossProbe()
    model = mlp()
    trainer = tbhooks.Trainer(
        model,
        torch.optim.SGD(model.parameters(), lr=0.1),
        nn.functional.cross_entropy,
        logdir=tmp_path,
        plugins=[probe, Scalars(every_n_steps=4)],
        disable=QUIET,
        autoload=False,
    )
    trainer.fit(loader(classification_data(n=80)), epochs=2)  # 10 batches an epoch

    events = read_events(tmp_path)
    losses = dict(probe.losses)
    assert sorted(losses) == list(range(1, 21))
    assert events.steps("train/loss") == [4, 8, 12, 16, 20]
    assert events.values("train/loss") == pytest.approx([losses[s] for s in (4, 8, 12, 16, 20)], rel=1e-6)
    epoch_means = [sum(losses[s] for s in range(1, 11)) / 10, sum(losses[s] for s in range(11, 21)) / 10]
    assert events.steps("train/epoch_loss") == [10, 20]
    assert events.values("train/epoch_loss") == pytest.approx(epoch_means, rel=1e-5)
    assert events.values("train/lr") == pytest.approx([0.1] * 5)


def test_eval_metrics_are_computed_over_the_whole_set(tmp_path):
    data = classification_data(n=30)
    model = mlp()
    trainer = tbhooks.Trainer(
        model,
        torch.optim.SGD(model.parameters(), lr=0.1),
        nn.functional.cross_entropy,
        logdir=tmp_path,
        disable=QUIET,
        autoload=False,
    )
    metrics = trainer.fit(loader(data), epochs=1, eval_loader=loader(data, batch_size=7))
    with torch.no_grad():
        logits = model(data.tensors[0].to(trainer.device)).cpu()  # "auto": on a GPU machine, the model's there
    accuracy = (logits.argmax(1) == data.tensors[1]).float().mean().item()
    loss = nn.functional.cross_entropy(logits, data.tensors[1]).item()
    assert metrics == pytest.approx({"loss": loss, "accuracy": accuracy}, rel=1e-5)
    events = read_events(tmp_path)
    assert events.values("eval/accuracy") == pytest.approx([accuracy])
    assert events.values("eval/loss") == pytest.approx([loss], rel=1e-5)
    assert events.steps("eval/loss") == [4]  # 30 samples in batches of 8: the eval belongs to step 4


def test_param_groups_get_one_lr_tag_each(tmp_path):
    model = mlp()
    optimizer = torch.optim.SGD(
        [{"params": model[0].parameters(), "lr": 0.1}, {"params": model[2].parameters(), "lr": 0.01}]
    )
    trainer = tbhooks.Trainer(
        model,
        optimizer,
        nn.functional.cross_entropy,
        logdir=tmp_path,
        plugins=[Scalars(every_n_steps=6)],
        disable=QUIET,
        autoload=False,
    )
    trainer.fit(loader(classification_data()), epochs=1)  # 6 batches
    events = read_events(tmp_path)
    assert events.values("train/lr/group0") == pytest.approx([0.1])
    assert events.values("train/lr/group1") == pytest.approx([0.01])


def test_tuple_and_dict_outputs_pick_the_prediction(tmp_path):
    class TwoHeads(nn.Module):
        def __init__(self, as_dict: bool) -> None:
            super().__init__()
            self.body = mlp()
            self.as_dict = as_dict

        def forward(self, x):
            logits = self.body(x)
            return {"aux": logits.sum(1), "scores": logits} if self.as_dict else (logits, logits.sum(1))

    data = classification_data()
    for as_dict, output in ((False, None), (True, "scores")):
        model = TwoHeads(as_dict)
        trainer = tbhooks.Trainer(
            model,
            torch.optim.SGD(model.parameters(), lr=0.1),
            nn.functional.cross_entropy,
            logdir=tmp_path / str(as_dict),
            output=output,
            disable=QUIET,
            autoload=False,
        )
        metrics = trainer.fit(loader(data), epochs=1, eval_loader=loader(data))
        assert set(metrics) == {"loss", "accuracy"}


def test_dict_outputs_without_a_key_say_how_to_choose(tmp_path):
    class DictModel(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = mlp()

        def forward(self, x):
            return {"scores": self.body(x)}

    model = DictModel()
    trainer = tbhooks.Trainer(
        model,
        torch.optim.SGD(model.parameters(), lr=0.1),
        nn.functional.cross_entropy,
        logdir=tmp_path,
        disable=QUIET,
        autoload=False,
    )
    with pytest.raises(KeyError, match="output='<key>'"):
        trainer.fit(loader(classification_data()), epochs=1)


def test_trace_prints_each_hook_call(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TBHOOKS_TRACE", "1")
    model = mlp()
    with tbhooks.attach(model, logdir=tmp_path, plugins=[LossProbe()], disable=QUIET, autoload=False) as hooks:
        hooks.epoch_start()
        hooks.batch_end(torch.zeros(2, 6), torch.zeros(2, dtype=torch.long), model(torch.zeros(2, 6)), torch.ones(()))
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("tbhooks trace:")]
    assert [line.split()[2] for line in lines] == [
        "on_fit_start",
        "on_capture_request",
        "on_epoch_start",
        "on_batch_end",
        "on_fit_end",
    ]
    assert "step=1" in lines[3] and "us [" in lines[3]


class Spy:
    """Records the steps on_batch_end reaches it; due on every ``every``-th step, or every step."""

    def __init__(self, name: str, every: int | None) -> None:
        self.name, self.every, self.steps = name, every, []
        if every is not None:
            self.batch_end_due = lambda step: step % every == 0

    @tbhooks.hookimpl
    def on_batch_end(self, step):
        self.steps.append(step)


def test_on_batch_end_reaches_each_plugin_on_its_due_steps_only(tmp_path):
    from tbhooks.testing import HookRecorder

    data = loader(classification_data(n=80))  # 10 steps an epoch
    for spies, raised in (
        ([Spy("three", 3), Spy("four", 4)], [3, 4, 6, 8, 9]),
        ([Spy("four", 4), Spy("every", None)], list(range(1, 11))),
    ):
        model = mlp()
        trainer = tbhooks.Trainer(
            model,
            torch.optim.SGD(model.parameters(), lr=0.1),
            nn.functional.cross_entropy,
            logdir=tmp_path / spies[0].name,
            plugins=spies,
            disable=[*QUIET, "scalars"],
            autoload=False,
        )
        recorder = HookRecorder().install(trainer)
        trainer.fit(data, epochs=1)
        # The event is raised only on steps some plugin is due, and reaches only the plugins due then;
        # a plugin without batch_end_due is due on every step.
        assert [call["step"] for call in recorder.of("on_batch_end")] == raised
        for spy in spies:
            assert spy.steps == [s for s in range(1, 11) if spy.every is None or s % spy.every == 0]


def test_a_schedule_may_change_in_the_plugins_own_hooks(tmp_path):
    class Sparse:
        name = "sparse"

        def __init__(self) -> None:
            self.extra: set[int] = set()
            self.steps: list[int] = []

        def batch_end_due(self, step: int) -> bool:
            return step % 29 == 0 or step in self.extra

        @tbhooks.hookimpl
        def on_batch_end(self, step):
            self.steps.append(step)
            if step == 58:
                self.extra.add(60)  # decided in on_batch_end: due two steps later

        @tbhooks.hookimpl
        def on_epoch_end(self, step):
            self.extra.add(step + 3)  # decided at the epoch end: the third step of the next epoch

    per_epoch = 70
    plugin = Sparse()
    model = nn.Linear(2, 2)
    with tbhooks.attach(model, logdir=tmp_path, plugins=[plugin], disable=[*QUIET, "scalars"], autoload=False) as hooks:
        for _ in range(2):
            hooks.epoch_start()
            for _ in range(per_epoch):
                hooks.batch_start()
                hooks.batch_end(torch.zeros(1, 2), None, torch.zeros(1, 2), torch.tensor(0.5))
            hooks.epoch_end()
    expected = sorted({s for s in range(1, 2 * per_epoch + 1) if s % 29 == 0} | {60, per_epoch + 3})
    assert plugin.steps == expected


def test_the_epoch_loss_is_exact_and_its_references_stay_bounded(tmp_path):
    from tbhooks import accumulate

    model = nn.Linear(2, 2)
    losses = [float(i % 7) / 8 for i in range(1000)]
    with tbhooks.attach(model, logdir=tmp_path, disable=[*QUIET, "scalars"], autoload=False) as hooks:
        hooks.epoch_start()
        for value in losses:
            hooks.batch_start()
            loss = torch.tensor(value, requires_grad=True) * 1  # a loss with a graph, as in training
            hooks.batch_end(torch.zeros(1, 2), None, torch.zeros(1, 2), loss)
            pending = hooks._losses._pending
            assert len(pending) < accumulate.FOLD and not any(t.requires_grad for t in pending)
            assert hooks.batch_idx == hooks.step
        metrics = hooks.epoch_end()
    assert metrics["loss"] == pytest.approx(sum(losses) / 1000)
