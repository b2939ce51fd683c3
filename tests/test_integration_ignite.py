"""The Ignite adapter: an Ignite run writes what the Trainer writes, and bad input never takes the fit down."""

from __future__ import annotations

import ast
import contextlib
import io
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from _support import (
    QUIET,
    READ_BACKS,
    Calls,
    EveryStep,
    Faulty,
    StopAt,
    classification_data,
    hook_counts,
    loader,
    mlp,
)
from conftest import figures_installed, plugin_installed
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import tbhooks
from tbhooks import Capture, PluginFaultWarning, TbhooksWarning
from tbhooks.default_plugins.histograms import Histograms
from tbhooks.default_plugins.scalars import Scalars
from tbhooks.testing import HookRecorder, read_events

pytest.importorskip("ignite")
from ignite.engine import Engine, Events, create_supervised_evaluator, create_supervised_trainer

from tbhooks.integrations import ignite as ignite_adapter
from tbhooks.integrations.ignite import attach

DOC = Path(__file__).parents[1] / "docs" / "integrations-ignite.md"
EVERY = 2
"""The scalars interval: several train/loss points in these short epochs."""
STEPS = 7
"""Training steps per epoch: 56 samples in batches of 8."""


def keep(x, y, y_pred, loss):
    """The documented trainer output_transform: tensors, no loss.item()."""
    return x, y, y_pred, loss


def data() -> DataLoader:
    return loader(classification_data(n=56))


def eval_data() -> DataLoader:
    return loader(classification_data(n=20, seed=1), batch_size=6)


def ignite_fit(
    logdir,
    *,
    plugins=(),
    disable=QUIET,
    output_transform=keep,
    eval_at=Events.EPOCH_COMPLETED,
    eval_first=False,
    **options,
):
    """The Trainer's training through Ignite; the evaluation handler on ``eval_at``, added after attach unless
    ``eval_first``.  Returns ``(hooks, trainer, model)``."""
    model = mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    loss_fn = nn.functional.cross_entropy
    transform = {} if output_transform is None else {"output_transform": output_transform}  # None: Ignite's
    trainer = create_supervised_trainer(model, optimizer, loss_fn, **transform)
    evaluator = create_supervised_evaluator(
        model, output_transform=lambda x, y, y_pred: (x, y, y_pred, loss_fn(y_pred, y))
    )
    if eval_first:
        trainer.add_event_handler(eval_at, lambda: evaluator.run(eval_data()))
    options = {"autoload": False, **options}
    hooks = attach(
        trainer,
        model,
        evaluator=evaluator,
        logdir=logdir,
        optimizer=optimizer,
        plugins=list(plugins),
        disable=disable,
        **options,
    )
    if not eval_first:
        trainer.add_event_handler(eval_at, lambda: evaluator.run(eval_data()))
    return hooks, trainer, model


def run(trainer, epochs=2):
    trainer.run(data(), max_epochs=epochs)


# -- same pictures everywhere --------------------------------------------------


def same_plugins():
    return [Scalars(every_n_steps=EVERY), Histograms(every_n_steps=5, activations="all")]


def test_same_tags_steps_and_values_as_the_trainer(tmp_path):
    disable = ["hparams", "embeddings"]  # hparams: the Trainer adds its own; embeddings: time only
    hooks, trainer, _ = ignite_fit(tmp_path / "ignite", plugins=same_plugins(), disable=disable)
    run(trainer)
    model = mlp()
    fit = tbhooks.Trainer(
        model,
        torch.optim.SGD(model.parameters(), lr=0.1),
        nn.functional.cross_entropy,
        logdir=tmp_path / "trainer",
        plugins=same_plugins(),
        disable=disable,
        autoload=False,
    )
    trainer_metrics = fit.fit(data(), epochs=2, eval_loader=eval_data())

    ours, theirs = read_events(tmp_path / "ignite"), read_events(tmp_path / "trainer")
    assert sorted(ours.scalars) == sorted(theirs.scalars)
    assert {"train/loss", "train/lr", "train/epoch_loss", "eval/loss", "eval/accuracy"} <= set(ours.scalars)
    assert sorted(ours.histograms) == sorted(theirs.histograms)
    assert {"activations/0", "grads/0.weight", "weights/2.bias"} <= set(ours.histograms)
    for tag in theirs.histograms:  # weights, gradients and activations (captured by module hooks) alike
        assert [e.step for e in ours.histograms[tag]] == [e.step for e in theirs.histograms[tag]] == [5, 10], tag
        sums = [e.histogram_value.sum for e in ours.histograms[tag]]
        assert sums == pytest.approx([e.histogram_value.sum for e in theirs.histograms[tag]], rel=1e-4, abs=1e-5)
    assert sorted(ours.pr_curves) == sorted(theirs.pr_curves) and ours.pr_curves
    assert ours.graph and theirs.graph
    assert ours.steps("train/loss") == list(range(EVERY, 2 * STEPS + 1, EVERY))
    assert ours.steps("eval/accuracy") == [STEPS, 2 * STEPS]
    for tag in theirs.scalars:
        assert ours.steps(tag) == theirs.steps(tag), tag
        assert ours.values(tag) == pytest.approx(theirs.values(tag), rel=1e-5), tag
    assert hooks.last_metrics == pytest.approx(trainer_metrics)
    assert set(trainer_metrics) == {"loss", "accuracy"}


@pytest.mark.parametrize("order", ["eval handler after attach", "eval handler before attach"])
def test_lifecycle_order_whatever_the_handler_order(tmp_path, order):
    hooks, trainer, _ = ignite_fit(tmp_path, plugins=[EveryStep()], eval_first="before" in order)
    recorder = HookRecorder(hooks)
    run(trainer)
    epoch = ["on_epoch_start", "on_batch_end", "on_epoch_end", "on_eval_start", "on_eval_batch_end", "on_eval"]
    assert recorder.collapsed() == ["on_fit_start", "on_capture_request", *epoch, *epoch, "on_fit_end"]
    assert [call["step"] for call in recorder.of("on_eval")] == [STEPS, 2 * STEPS]
    assert [call["epochs"] for call in recorder.of("on_fit_start")] == [2]


def test_an_evaluation_at_completed_is_logged_before_the_run_closes(tmp_path):
    # The user's COMPLETED handler comes after attach's; the adapter moves its own behind it at STARTED.
    hooks, trainer, _ = ignite_fit(tmp_path, eval_at=Events.COMPLETED)
    recorder = HookRecorder(hooks)
    run(trainer)
    assert recorder.collapsed()[-5:] == ["on_epoch_end", "on_eval_start", "on_eval_batch_end", "on_eval", "on_fit_end"]
    assert read_events(tmp_path).steps("eval/accuracy") == [2 * STEPS]
    assert set(hooks.last_metrics) == {"loss", "accuracy"}


# -- faults, interrupts, exceptions --------------------------------------------


def test_a_faulty_plugin_is_isolated_and_the_fit_completes(tmp_path):
    faulty = Faulty("on_batch_end", after=2)  # raises on its third call
    hooks, trainer, _ = ignite_fit(tmp_path, plugins=[faulty, Scalars(every_n_steps=EVERY)])
    with pytest.warns(PluginFaultWarning) as caught:
        run(trainer)
    assert len(caught) == 1 and "plugin 'faulty' raised in on_batch_end" in str(caught[0].message)
    assert faulty.calls == 3 and list(hooks.faults) == ["faulty"]
    assert trainer.state.iteration == 2 * STEPS
    assert read_events(tmp_path).steps("eval/accuracy") == [STEPS, 2 * STEPS]
    assert set(hooks.last_metrics) == {"loss", "accuracy"}


class Wants:
    """Asks for the first layer's output on every step, so module hooks are on the model during a step."""

    name = "wants"

    def __init__(self) -> None:
        self.exceptions: list[BaseException] = []

    @tbhooks.hookimpl
    def on_capture_request(self):
        return [Capture("0", "output", every_n_steps=1)]

    @tbhooks.hookimpl
    def on_exception(self, exception):
        self.exceptions.append(exception)


def test_keyboard_interrupt_flushes_and_closes_the_writer(tmp_path):
    wants = Wants()
    # flush_secs=600: only closing the run can flush what the steps wrote before the interrupt.
    hooks, trainer, model = ignite_fit(tmp_path, plugins=[wants, Scalars(every_n_steps=1)], flush_secs=600)
    recorder = HookRecorder(hooks)
    before = hook_counts(model)
    seen = []

    @trainer.on(Events.ITERATION_STARTED(once=5))  # after attach's batch_start: the module hooks are on
    def interrupt():
        seen.append(sum(map(sum, hook_counts(model))))
        raise KeyboardInterrupt

    handled = []
    trainer.add_event_handler(Events.EXCEPTION_RAISED, lambda engine, exc: handled.append(type(exc).__name__))
    with pytest.raises(KeyboardInterrupt):
        run(trainer)
    assert seen == [1] and hook_counts(model) == before
    assert [type(exc) for exc in wants.exceptions] == [KeyboardInterrupt]
    assert handled == ["KeyboardInterrupt"], "the user's EXCEPTION_RAISED handler ran, once"
    assert "on_fit_end" not in recorder.names() and recorder.names()[-1] == "on_exception"
    assert hooks.run.writer.all_writers is None, "the SummaryWriter is closed"
    events = read_events(tmp_path)
    assert events.steps("train/loss") == [1, 2, 3, 4]
    assert "eval/accuracy" not in events.scalars, "no evaluation ran"


def test_an_error_in_the_step_propagates_once_through_every_handler(tmp_path):
    model = mlp()

    def step(engine, batch):
        if engine.state.iteration == 3:
            raise ValueError("bad batch")
        return batch[0], batch[1], model(batch[0]), model(batch[0]).sum()

    trainer = Engine(step)
    handled = []
    trainer.add_event_handler(Events.EXCEPTION_RAISED, lambda engine, exc: handled.append(str(exc)))  # before
    wants = Wants()
    hooks = attach(trainer, model, logdir=tmp_path, plugins=[wants], disable=QUIET, autoload=False)
    trainer.add_event_handler(Events.EXCEPTION_RAISED, lambda engine, exc: handled.append(str(exc)))  # after
    with pytest.raises(ValueError, match="bad batch"):
        trainer.run(data(), max_epochs=1)
    assert [str(exc) for exc in wants.exceptions] == ["bad batch"]
    # Ignite fires EXCEPTION_RAISED a second time for an error of the step; the adapter then re-raises
    # at once, so only the handler added before attach sees it twice (as without the adapter).
    assert handled == ["bad batch", "bad batch", "bad batch"]
    assert hooks.step == 2 and hooks.run.writer.all_writers is None


# -- options: disable, class_names, entry points --------------------------------


@pytest.mark.skipif(not plugin_installed("example"), reason="tbhooks-example is not installed")
def test_disable_class_names_and_entry_points_work_as_in_attach(tmp_path):
    names = ["cat", "dog", "bird"]
    # autoload=True: the installed entry points (example, figures) join; disable= leaves out the rest.
    hooks, trainer, _ = ignite_fit(
        tmp_path,
        disable=["scalars", "graph", "histograms", "embeddings", "images", "hparams"],
        class_names=names,
        autoload=True,
    )
    run(trainer)
    events = read_events(tmp_path)
    assert events.scalars == {}, "scalars is disabled"
    assert sorted(events.pr_curves) == sorted(f"pr_curves/{name}" for name in names)
    assert [step for step, _ in events.pr_curves["pr_curves/cat"]] == [STEPS, 2 * STEPS]
    from tbhooks_example import Example

    sampled = 2 * STEPS // Example().every_n_steps  # on_batch_end is raised on its declared steps only
    expected = f"{2 * STEPS} steps, {sampled} sampled, 2 epochs, 2 evaluations"
    assert events.texts["example/summary/text_summary"] == [expected]
    if figures_installed():
        assert len(events.images["figures/confusion_matrix"]) == 2
    pm = hooks.plugin_manager
    assert pm.get_plugin("example") is not None and pm.is_blocked("scalars") and pm.is_blocked("graph")
    assert hooks.faults == {}


# -- stopping, running again ----------------------------------------------------


def test_a_stop_request_terminates_and_a_second_run_needs_a_new_attach(tmp_path):
    hooks, trainer, model = ignite_fit(tmp_path / "first", plugins=[StopAt(3), Scalars(every_n_steps=1)])
    recorder = HookRecorder(hooks)
    run(trainer)
    assert trainer.state.iteration == 3 and hooks.step == 3
    # terminate() mid-epoch skips EPOCH_COMPLETED (and so the user's evaluation); the epoch still ends.
    assert recorder.collapsed()[-3:] == ["on_batch_end", "on_epoch_end", "on_fit_end"]
    assert read_events(tmp_path / "first").steps("train/epoch_loss") == [3]

    with pytest.warns(TbhooksWarning, match=r"call tbhooks.integrations.ignite.attach\(trainer, model") as caught:
        run(trainer, epochs=1)
    assert len(caught) == 1 and len(recorder.names()) == len(recorder.calls)
    assert read_events(tmp_path / "first").steps("train/loss") == [1, 2, 3], "the closed run logged nothing"

    again = attach(
        trainer, model, logdir=tmp_path / "second", plugins=[Scalars(every_n_steps=1)], disable=QUIET, autoload=False
    )
    run(trainer, epochs=1)
    assert read_events(tmp_path / "second").steps("train/loss") == list(range(1, STEPS + 1))
    assert again.run.writer.all_writers is None


# -- no device sync, unreadable outputs ------------------------------------------


def test_the_per_iteration_handlers_read_nothing_back_on_steps_no_plugin_is_due(tmp_path):
    model = mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    trainer = create_supervised_trainer(model, optimizer, nn.functional.cross_entropy, output_transform=keep)
    per_step: dict[int, list[str]] = {}
    modes: list[Calls] = []

    def enter(engine):
        modes.append(Calls())
        modes[-1].__enter__()

    def leave(engine):
        mode = modes.pop()
        mode.__exit__(None, None, None)
        per_step.setdefault(engine.state.iteration, []).extend(mode.names)

    # Around the adapter's own handlers only: added before attach (enter) and after it (leave).
    trainer.add_event_handler(Events.ITERATION_STARTED, enter)
    trainer.add_event_handler(Events.ITERATION_COMPLETED, enter)
    hooks = attach(
        trainer,
        model,
        logdir=tmp_path,
        optimizer=optimizer,
        plugins=[Scalars(every_n_steps=3)],
        disable=QUIET,
        autoload=False,
    )
    trainer.add_event_handler(Events.ITERATION_STARTED, leave)
    trainer.add_event_handler(Events.ITERATION_COMPLETED, leave)
    run(trainer)
    assert sorted(per_step) == list(range(1, 2 * STEPS + 1))
    for step, names in per_step.items():
        read = READ_BACKS & set(names)
        if step % 3:
            assert not read, f"step {step} read a value back: {read}"
        else:  # the check can fail: on Scalars' steps the loss is read back, once
            assert names.count("__float__") == 1, (step, names)
    assert read_events(tmp_path).steps("train/loss") == [3, 6, 9, 12]
    assert hooks.step == 2 * STEPS


def test_ignites_default_output_warns_once_and_still_feeds_the_loss(tmp_path):
    hooks, trainer, _ = ignite_fit(tmp_path / "default", plugins=[Scalars(every_n_steps=1)], output_transform=None)
    with pytest.warns(TbhooksWarning) as caught:
        run(trainer)
    assert len(caught) == 1
    message = str(caught[0].message)
    assert "output is a float (a loss alone), not (x, y, y_pred, loss)" in message
    assert "output_transform=lambda x, y, y_pred, loss: (x, y, y_pred, loss)" in message
    assert "loss.item()" in message
    # The loss alone still feeds train/loss: the same values as with the documented transform.
    _, full, _ = ignite_fit(tmp_path / "full", plugins=[Scalars(every_n_steps=1)])
    run(full)
    default, documented = read_events(tmp_path / "default"), read_events(tmp_path / "full")
    assert default.steps("train/loss") == list(range(1, 2 * STEPS + 1))
    assert default.values("train/loss") == pytest.approx(documented.values("train/loss"), rel=1e-6)
    assert default.values("train/epoch_loss") == pytest.approx(documented.values("train/epoch_loss"), rel=1e-6)
    assert set(hooks.last_metrics) == {"loss", "accuracy"}


def test_an_unreadable_output_feeds_nothing_warns_once_and_the_fit_goes_on(tmp_path):
    model = mlp()
    trainer = Engine(lambda engine, batch: {"loss": nn.functional.cross_entropy(model(batch[0]), batch[1])})
    seen = []

    class Sees:
        @tbhooks.hookimpl
        def on_batch_end(self, inputs, targets, outputs, loss):
            seen.append((inputs, targets, outputs, loss))

    hooks = attach(trainer, model, logdir=tmp_path, plugins=[Sees()], disable=QUIET, autoload=False)
    with pytest.warns(TbhooksWarning, match=r"output is a dict \(unreadable\).*plugins get nothing") as caught:
        trainer.run(data(), max_epochs=2)
    assert len(caught) == 1
    assert seen == [(None, None, None, None)] * (2 * STEPS) and hooks.step == 2 * STEPS


def test_an_unreadable_evaluator_output_is_skipped_with_one_warning(tmp_path):
    model = mlp()
    trainer = create_supervised_trainer(
        model, torch.optim.SGD(model.parameters(), lr=0.1), nn.functional.cross_entropy, output_transform=keep
    )
    evaluator = create_supervised_evaluator(model, output_transform=lambda x, y, y_pred: {"y_pred": y_pred})
    hooks = attach(trainer, model, evaluator=evaluator, logdir=tmp_path, disable=QUIET, autoload=False)
    trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda: evaluator.run(eval_data()))
    with pytest.warns(TbhooksWarning) as caught:
        run(trainer)
    messages = [str(w.message) for w in caught]
    assert (
        "evaluator's output is a dict" in messages[0]
        and "output_transform=lambda x, y, y_pred: (x, y, y_pred)" in messages[0]
    )
    assert len(messages) == 2 and "the evaluation saw no batch" in messages[1]
    assert trainer.state.iteration == 2 * STEPS and hooks.last_metrics == {}


# -- wrong kinds, imports, the docs' quick start, the demo loop ---------------


def test_engines_of_the_wrong_kind_are_a_type_error_naming_the_argument(tmp_path):
    model = mlp()
    trainer = create_supervised_trainer(model, torch.optim.SGD(model.parameters(), lr=0.1), nn.functional.cross_entropy)
    with pytest.raises(TypeError, match=r"^trainer expects an ignite.engine.Engine, got Sequential$"):
        attach(model, model, logdir=tmp_path / "a")
    with pytest.raises(TypeError, match=r"^evaluator expects an ignite.engine.Engine or None, got function$"):
        attach(trainer, model, evaluator=lambda batch: batch, logdir=tmp_path / "b")
    with pytest.raises(ValueError, match=r"evaluator expects a second Engine"):
        attach(trainer, model, evaluator=trainer, logdir=tmp_path / "c")
    with pytest.raises(TypeError, match=r"^model expects a torch.nn.Module, got Engine$"):
        attach(trainer, trainer, logdir=tmp_path / "d")
    assert not any((tmp_path / name).exists() for name in "abc"), "nothing written before the checks"
    assert trainer not in ignite_adapter.hosts, "no handler registered"


def test_importing_tbhooks_does_not_import_ignite():
    code = "import sys, tbhooks, tbhooks.integrations, tbhooks.demo; print('ignite' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert done.stdout.split() == ["False"]


def quick_start() -> str:
    section = DOC.read_text().split("## Quick start\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert len(blocks) == 1
    return blocks[0]


def test_the_docs_quick_start_runs_as_written(tmp_path, monkeypatch):
    code = quick_start()
    assert len(code.strip().splitlines()) <= 20
    monkeypatch.chdir(tmp_path)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(compile(code, str(DOC), "exec"), {"__name__": "ignite_quick_start"})
    metrics = ast.literal_eval(printed.getvalue().strip())
    assert set(metrics) == {"loss", "accuracy"} and 0.0 <= metrics["accuracy"] <= 1.0
    events = read_events(tmp_path / "runs" / "ignite")
    assert events.values("eval/accuracy")[-1] == pytest.approx(metrics["accuracy"])
    assert events.steps("train/epoch_loss") == [8, 16]


def test_the_docs_stay_short_and_name_every_event():
    text = DOC.read_text()
    assert len(text) < 6000
    for event in (
        "STARTED",
        "EPOCH_STARTED",
        "ITERATION_STARTED",
        "ITERATION_COMPLETED",
        "EPOCH_COMPLETED",
        "TERMINATE",
        "COMPLETED",
        "EXCEPTION_RAISED",
    ):
        assert f"`{event}` |" in text, event


def test_the_demo_loop_trains_like_the_trainer(tmp_path):
    from tbhooks.demo.loop_ignite import fit_ignite
    from tbhooks.demo.loops import fit_trainer
    from tbhooks.demo.net import Net

    generator = torch.Generator().manual_seed(0)
    images, labels = torch.randn(48, 1, 28, 28, generator=generator), torch.randint(0, 10, (48,), generator=generator)
    train = DataLoader(TensorDataset(images[:32], labels[:32]), batch_size=16)
    test = DataLoader(TensorDataset(images[32:], labels[32:]), batch_size=16)
    results = []
    for name, fit in (("ignite", fit_ignite), ("trainer", fit_trainer)):
        torch.manual_seed(0)
        model = Net(classes=10)
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        options = {"disable": ["graph", "embeddings", "histograms", "hparams"], "autoload": False}
        results.append(
            fit(model, optimizer, train, test, epochs=2, logdir=tmp_path / name, device=torch.device("cpu"), **options)
        )
    assert set(results[0]) == {"loss", "accuracy"}
    assert results[0] == pytest.approx(results[1], rel=1e-5)
    ours, theirs = read_events(tmp_path / "ignite"), read_events(tmp_path / "trainer")
    assert sorted(ours.scalars) == sorted(theirs.scalars) and sorted(ours.images) == sorted(theirs.images)
    assert ours.steps("eval/accuracy") == [2, 4]


def test_a_dict_y_pred_needs_the_output_option_else_one_warning(tmp_path):
    def fit(logdir, **options):
        model = mlp()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        as_dict = lambda x, y, y_pred, loss: (x, y, {"scores": y_pred}, loss)  # noqa: E731
        trainer = create_supervised_trainer(model, optimizer, nn.functional.cross_entropy, output_transform=as_dict)
        plugins = [Scalars(every_n_steps=1), EveryStep()]
        hooks = attach(trainer, model, logdir=logdir, plugins=plugins, disable=QUIET, autoload=False, **options)
        recorder = HookRecorder(hooks)
        run(trainer)
        return hooks, [call["outputs"] for call in recorder.of("on_batch_end")]

    hooks, outputs = fit(tmp_path / "picked", output="scores")  # no warning: output= picks the prediction
    assert hooks.faults == {} and all(isinstance(o, torch.Tensor) and o.shape == (8, 3) for o in outputs)
    with pytest.warns(
        TbhooksWarning, match=r"y_pred cannot be read as a prediction .*attach\(\.\.\., output"
    ) as caught:
        hooks, outputs = fit(tmp_path / "unpicked")
    assert len(caught) == 1 and hooks.faults == {} and outputs == [None] * (2 * STEPS)
    assert read_events(tmp_path / "unpicked").steps("train/loss") == list(range(1, 2 * STEPS + 1))
