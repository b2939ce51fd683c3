"""The core: events reach plugins with the documented arguments, and scalars are read back exactly."""

from __future__ import annotations

import pytest
import torch
from _support import classification_data, loader, mlp
from torch import nn

import tbhooks
from tbhooks.default_plugins.scalars import Scalars
from tbhooks.testing import read_events

QUIET = ["graph", "images", "embeddings", "pr_curves", "histograms", "hparams"]


class LossProbe:
    """Keeps every batch loss it is handed (reading them is fine in a test)."""

    name = "loss_probe"

    def __init__(self) -> None:
        self.losses: list[tuple[int, float]] = []

    @tbhooks.hookimpl
    def on_batch_end(self, step, loss):
        self.losses.append((step, float(loss)))


def test_running_loss_is_the_mean_of_the_interval(tmp_path):
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
    # Every 4 steps, plus the partial interval at each epoch end (steps 10 and 20).
    assert events.steps("train/loss") == [4, 8, 10, 12, 16, 20]
    losses = dict(probe.losses)
    bounds = [(1, 4), (5, 8), (9, 10), (11, 12), (13, 16), (17, 20)]
    expected = [sum(losses[s] for s in range(a, b + 1)) / (b - a + 1) for a, b in bounds]
    assert events.values("train/loss") == pytest.approx(expected, rel=1e-5)
    epoch_means = [sum(losses[s] for s in range(1, 11)) / 10, sum(losses[s] for s in range(11, 21)) / 10]
    assert events.steps("train/epoch_loss") == [10, 20]
    assert events.values("train/epoch_loss") == pytest.approx(epoch_means, rel=1e-5)
    assert events.values("train/lr") == pytest.approx([0.1] * 6)


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
        model, optimizer, nn.functional.cross_entropy, logdir=tmp_path, disable=QUIET, autoload=False
    )
    trainer.fit(loader(classification_data()), epochs=1)
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


def test_on_batch_end_is_skipped_on_steps_no_plugin_is_due(tmp_path):
    from tbhooks.testing import HookRecorder

    data = loader(classification_data(n=80))  # 10 steps an epoch
    for plugins, expected in (([Scalars(every_n_steps=4)], [4, 8]), ([Scalars(every_n_steps=4), LossProbe()], None)):
        model = mlp()
        trainer = tbhooks.Trainer(
            model,
            torch.optim.SGD(model.parameters(), lr=0.1),
            nn.functional.cross_entropy,
            logdir=tmp_path / str(len(plugins)),
            plugins=plugins,
            disable=QUIET,
            autoload=False,
        )
        recorder = HookRecorder().install(trainer)
        trainer.fit(data, epochs=1)
        steps = [call["step"] for call in recorder.of("on_batch_end")]
        # Every plugin with on_batch_end has batch_end_due: only due steps raise the event.
        # A plugin without it (LossProbe) is due on every step.
        assert steps == (expected or list(range(1, 11)))
        assert read_events(tmp_path / str(len(plugins))).steps("train/loss") == [4, 8, 10]


def test_batch_end_due_is_asked_ahead_and_again_after_every_event(tmp_path):
    # The core asks batch_end_due about upcoming steps in one go (LOOKAHEAD at a time) and
    # forgets the answers after each event it raises: a plugin whose answer changes in one
    # of its hooks (here on_epoch_end) is still called on exactly the steps it is due.
    from tbhooks.hooks import LOOKAHEAD

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

    per_epoch = 2 * LOOKAHEAD + 5
    plugin = Sparse()
    model = nn.Linear(2, 2)
    with tbhooks.attach(model, logdir=tmp_path, plugins=[plugin], disable=[*QUIET, "scalars"], autoload=False) as hooks:
        for _ in range(2):
            hooks.epoch_start()
            for _ in range(per_epoch):
                hooks.batch_start()
                hooks.batch_end(torch.zeros(1, 2), None, torch.zeros(1, 2), torch.tensor(0.5))
            hooks.epoch_end()
    total = 2 * per_epoch
    expected = sorted({s for s in range(1, total + 1) if s % 29 == 0} | {60, per_epoch + 3})
    assert plugin.steps == expected


def test_losses_kept_between_events_stay_bounded_and_sum_exactly(tmp_path):
    # On steps where nothing is due the core only appends a reference to the loss; the
    # references are folded on the steps it looks ahead (at least every LOOKAHEAD steps),
    # so even with no plugin at all the epoch's losses are not all held.
    from tbhooks.accumulate import DeviceSum
    from tbhooks.hooks import LOOKAHEAD

    model = nn.Linear(2, 2)
    losses = [float(i % 7) / 8 for i in range(1000)]
    most = 0
    with tbhooks.attach(model, logdir=tmp_path, disable=[*QUIET, "scalars"], autoload=False) as hooks:
        hooks.epoch_start()
        for value in losses:
            hooks.batch_start()
            loss = torch.tensor(value, requires_grad=True) * 1  # a loss with a graph, as in training
            hooks.batch_end(torch.zeros(1, 2), None, torch.zeros(1, 2), loss)
            most = max(most, len(hooks.run.train_losses._pending))
            assert hooks.batch_idx == hooks.step
        assert most <= DeviceSum()._fold + LOOKAHEAD
        assert not any(t.requires_grad for t in hooks.run.train_losses._pending)
        assert hooks.run.train_losses.count == 1000
        assert float(hooks.run.train_losses.total()) == pytest.approx(sum(losses))
        metrics = hooks.epoch_end()
    assert metrics["loss"] == pytest.approx(sum(losses) / 1000)


def test_loss_points_reach_the_writer_together_and_none_is_lost(tmp_path, monkeypatch):
    # A logging step keeps its event; the kept events go to the writer WRITE_SECS after the
    # first of them, and at the epoch end; on an exception nothing kept is lost.
    import tbhooks.default_plugins.scalars as scalars_module

    clock = [100.0]
    monkeypatch.setattr(scalars_module.time, "monotonic", lambda: clock[0])
    model = nn.Linear(2, 2)

    def step(hooks):
        hooks.batch_start()
        hooks.batch_end(torch.zeros(1, 2), None, torch.zeros(1, 2), torch.tensor(0.5))

    def written(logdir):
        return [point.step for point in read_events(logdir).scalars.get("train/loss", [])]

    with tbhooks.attach(model, logdir=tmp_path / "a", plugins=[Scalars(every_n_steps=2)], disable=QUIET) as hooks:
        hooks.epoch_start()
        for _ in range(6):
            step(hooks)
        hooks.run.writer.flush()
        assert written(tmp_path / "a") == []  # steps 2, 4, 6 kept: no time has passed
        clock[0] += scalars_module.WRITE_SECS
        step(hooks)
        step(hooks)  # step 8 logs a second after step 2: all four go out
        hooks.run.writer.flush()
        assert written(tmp_path / "a") == [2, 4, 6, 8]
        step(hooks)
        step(hooks)
        hooks.epoch_end()  # step 10 kept, then written with the epoch's end
        assert written(tmp_path / "a") == [2, 4, 6, 8, 10]

    with pytest.raises(RuntimeError, match="boom"):
        with tbhooks.attach(model, logdir=tmp_path / "b", plugins=[Scalars(every_n_steps=2)], disable=QUIET) as hooks:
            hooks.epoch_start()
            for _ in range(4):
                step(hooks)
            raise RuntimeError("boom")
    assert written(tmp_path / "b") == [2, 4]
