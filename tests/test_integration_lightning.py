"""The Lightning adapter: a Lightning fit writes what tbhooks.Trainer writes, through TbhooksCallback."""

from __future__ import annotations

import ast
import contextlib
import io
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from _support import QUIET, Faulty, classification_data, hook_counts, loader, mlp
from conftest import plugin_installed
from torch import nn

import tbhooks
from tbhooks import PluginFaultWarning, TbhooksWarning
from tbhooks.default_plugins.histograms import Histograms
from tbhooks.default_plugins.scalars import Scalars
from tbhooks.testing import HookRecorder, read_events

pytest.importorskip("pytorch_lightning")
from tbhooks.integrations.lightning import TbhooksCallback, pl

pytestmark = [
    # Lightning 2.6 calls torch.utils._pytree.LeafSpec, which torch 2.14 deprecates; nothing of ours.
    pytest.mark.filterwarnings(r"ignore:`isinstance\(treespec, LeafSpec\)`:FutureWarning"),
    # Lightning's advice for file-backed data on machines with many cores; these loaders hold tensors.
    pytest.mark.filterwarnings(r"ignore:The '\w+' does not have many workers:UserWarning"),
    # On a machine with a GPU: these tests train on the CPU on purpose.
    pytest.mark.filterwarnings("ignore:GPU available but not used:UserWarning"),
]

ROOT = Path(__file__).resolve().parent.parent
EVERY = 3
TRAIN, EVAL = 56, 20
"""Training and evaluation samples: 7 training batches of 8 an epoch, 4 evaluation batches of 6."""


class Classifier(pl.LightningModule):
    """``_support.mlp()`` as a LightningModule: its layers under their own names ("0", "1", "2"), the same weights.

    ``returns``: ``"loss"`` (the steps return the loss alone) or ``"dict"`` (``{"loss", "outputs"}``).
    Records every forward output and how many forward hooks the module held at each training step.
    """

    def __init__(self, returns: str = "loss", fail_at: int | None = None, log: bool = False) -> None:
        super().__init__()
        for name, layer in mlp().named_children():
            self.add_module(name, layer)
        self.returns, self.fail_at, self.log_own = returns, fail_at, log
        self.forwards: list[torch.Tensor] = []
        self.hooks_at_step: list[int] = []
        self.batch_losses: list[float] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.children():
            x = layer(x)
        self.forwards.append(x.detach().clone())
        return x

    def step(self, batch):
        inputs, targets = batch
        outputs = self(inputs)
        loss = nn.functional.cross_entropy(outputs, targets)
        return {"loss": loss, "outputs": outputs} if self.returns == "dict" else loss

    def training_step(self, batch, batch_idx):
        if self.fail_at is not None and self.global_step == self.fail_at:
            raise KeyboardInterrupt
        self.hooks_at_step.append(len(self._forward_hooks))
        result = self.step(batch)
        loss = result["loss"] if isinstance(result, dict) else result
        self.batch_losses.append(loss.item())
        if self.log_own:
            self.log("lightning/loss", loss)
        return result

    def validation_step(self, batch, batch_idx):
        return self.step(batch)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def scalars_callback(logdir: Path, *plugins: object) -> TbhooksCallback:
    """A callback with the scalars every EVERY steps, the given plugins, and every other built-in off."""
    return TbhooksCallback(
        logdir=logdir, plugins=[*plugins, Scalars(every_n_steps=EVERY)], disable=QUIET, autoload=False
    )


def loaders():
    return loader(classification_data(n=TRAIN)), loader(classification_data(n=EVAL, seed=1), 6)


def lightning_fit(module: Classifier, callback: TbhooksCallback, epochs: int = 2, **trainer_options):
    options = {
        "max_epochs": epochs,
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "accelerator": "cpu",
        **trainer_options,
    }
    trainer = pl.Trainer(callbacks=[callback], **options)
    trainer.fit(module, *loaders())
    return trainer


# ---------------------------------------------------------------------------
# same pictures as tbhooks.Trainer
# ---------------------------------------------------------------------------


def test_same_pictures_as_the_trainer(tmp_path):
    def options() -> dict:
        plugins = [Scalars(every_n_steps=EVERY), Histograms(every_n_steps=7, activations="all")]
        return {"plugins": plugins, "autoload": False, "class_names": ["a", "b", "c"]}

    by_lightning = HookRecorder()
    callback = TbhooksCallback(logdir=tmp_path / "lightning", **options())
    callback.on_attach.append(by_lightning.watch)
    trainer = lightning_fit(Classifier(), callback)  # with Lightning's sanity check (2 batches): not logged

    model = mlp()
    fit = tbhooks.Trainer(
        model,
        torch.optim.SGD(model.parameters(), lr=0.1),
        nn.functional.cross_entropy,
        logdir=tmp_path / "trainer",
        progress=False,
        **options(),
    )
    by_trainer = HookRecorder().install(fit)
    train_loader, eval_loader = loaders()
    metrics = fit.fit(train_loader, epochs=2, eval_loader=eval_loader)

    lit, ref = read_events(tmp_path / "lightning"), read_events(tmp_path / "trainer")
    for kind in ("scalars", "histograms", "images", "texts", "pr_curves"):
        assert sorted(getattr(lit, kind)) == sorted(getattr(ref, kind)), kind
    assert lit.graph and ref.graph
    assert {"train/loss", "eval/accuracy", "activations/0", "grads/2.bias", "pr_curves/a"} <= {
        *lit.scalars,
        *lit.histograms,
        *lit.pr_curves,
    }
    for tag in ("activations/0", "grads/2.bias", "weights/0.weight"):
        assert [h.step for h in lit.histograms[tag]] == [h.step for h in ref.histograms[tag]] == [7, 14], tag
        for ours, theirs in zip(lit.histograms[tag], ref.histograms[tag], strict=True):
            assert ours.histogram_value.sum == pytest.approx(theirs.histogram_value.sum, rel=1e-5, abs=1e-6), tag
    assert lit.steps("train/loss") == ref.steps("train/loss") == list(range(EVERY, 15, EVERY))
    for tag in ("train/loss", "train/epoch_loss", "eval/loss", "eval/accuracy", "train/lr"):
        assert lit.steps(tag) == ref.steps(tag), tag
        assert lit.values(tag) == pytest.approx(ref.values(tag), rel=1e-6), tag
    assert lit.steps("eval/loss") == [7, 14], "two evaluations: the sanity check is not one"
    assert callback.hooks.last_metrics == pytest.approx(metrics) and metrics["accuracy"] > 0
    assert by_lightning.collapsed() == by_trainer.collapsed(), "the lifecycle in the same order"
    assert trainer.global_step == callback.hooks.step == 14


# ---------------------------------------------------------------------------
# the step, the predictions, the loss
# ---------------------------------------------------------------------------


def test_step_is_the_optimizer_step_under_gradient_accumulation(tmp_path):
    module = Classifier()
    callback = TbhooksCallback(logdir=tmp_path, plugins=[Scalars(every_n_steps=1)], disable=QUIET, autoload=False)
    trainer = lightning_fit(module, callback, accumulate_grad_batches=2, num_sanity_val_steps=0)
    # 7 batches an epoch: steps after batches 2, 4, 6 and 7 (an epoch's last batch always steps).
    assert trainer.global_step == callback.hooks.step == 8
    events = read_events(tmp_path)
    assert events.steps("train/loss") == list(range(1, 9))
    assert events.steps("train/epoch_loss") == events.steps("eval/loss") == [4, 8]
    windows = [(0, 2), (2, 4), (4, 6), (6, 7)]
    losses = module.batch_losses
    expected = [sum(losses[e * 7 + a : e * 7 + b]) / (b - a) for e in range(2) for a, b in windows]
    assert events.values("train/loss") == pytest.approx(expected, rel=1e-5), "the mean loss of the step's batches"


class Probe:
    """Keeps the outputs and losses that on_batch_end and on_eval_batch_end hand to plugins, on even steps."""

    name = "probe"

    def __init__(self) -> None:
        self.train: dict[int, torch.Tensor | None] = {}
        self.evaluation: list[torch.Tensor] = []

    def batch_end_due(self, step: int) -> bool:
        return step % 2 == 0

    @tbhooks.hookimpl
    def on_batch_end(self, step, outputs):
        self.train[step] = outputs

    @tbhooks.hookimpl
    def on_eval_batch_end(self, outputs):
        self.evaluation.append(outputs)


@pytest.mark.parametrize("returns", ["loss", "dict"])
def test_predictions_without_an_extra_forward_pass(tmp_path, returns):
    module, probe = Classifier(returns), Probe()
    callback = TbhooksCallback(logdir=tmp_path, plugins=[probe], disable=QUIET, autoload=False)
    before = hook_counts(module)
    lightning_fit(module, callback, num_sanity_val_steps=0)
    assert len(module.forwards) == 2 * 7 + 2 * 4, "one forward per training and per evaluation batch, no more"
    train_forwards = module.forwards[:7] + module.forwards[11:18]  # epoch 1, its evaluation, epoch 2
    assert sorted(probe.train) == [2, 4, 6, 8, 10, 12, 14]
    for step, outputs in probe.train.items():
        assert torch.equal(outputs, train_forwards[step - 1]), step
    assert len(probe.evaluation) == 8
    for outputs, forward in zip(probe.evaluation, module.forwards[7:11] + module.forwards[18:], strict=True):
        assert torch.equal(outputs, forward)
    # The forward hook is there on the steps a plugin logs only, and gone after the fit.
    assert module.hooks_at_step == [1 if step % 2 == 0 else 0 for step in range(1, 15)]
    assert hook_counts(module) == before


# ---------------------------------------------------------------------------
# where the run goes
# ---------------------------------------------------------------------------


def event_dirs(root: Path) -> list[Path]:
    return sorted({path.parent for path in root.rglob("events.out.tfevents.*")})


def test_tensorboard_logger_directory_holds_one_run(tmp_path):
    logger = pl.loggers.TensorBoardLogger(tmp_path / "logs", name="lit", default_hp_metric=False)
    callback = TbhooksCallback(plugins=[Scalars(every_n_steps=EVERY)], disable=QUIET, autoload=False)  # no logdir
    lightning_fit(Classifier(log=True), callback, logger=logger, log_every_n_steps=1, default_root_dir=tmp_path)
    assert event_dirs(tmp_path) == [Path(logger.log_dir)]
    assert len(list(Path(logger.log_dir).glob("events.out.tfevents.*"))) == 2, "Lightning's file and tbhooks'"
    events = read_events(logger.log_dir)
    assert {"lightning/loss", "train/loss", "eval/accuracy"} <= set(events.scalars)
    assert events.steps("train/loss") == [3, 6, 9, 12]


def test_logdir_given_beside_a_logger_warns_that_it_is_unused(tmp_path):
    logger = pl.loggers.TensorBoardLogger(tmp_path / "logs", name="lit", default_hp_metric=False)
    callback = TbhooksCallback(logdir=tmp_path / "mine", disable=QUIET, autoload=False)
    with pytest.warns(TbhooksWarning, match=r"writes into the TensorBoardLogger's log_dir .*mine.* is not used"):
        lightning_fit(Classifier(), callback, epochs=1, logger=logger, log_every_n_steps=1)
    assert callback.hooks.logdir == Path(logger.log_dir) and not (tmp_path / "mine").exists()


def test_without_a_logger_logdir_or_the_default_root_dir(tmp_path):
    callback = TbhooksCallback(logdir=tmp_path / "mine", disable=QUIET, autoload=False)
    lightning_fit(Classifier(), callback, epochs=1, default_root_dir=tmp_path / "root")
    callback_default = TbhooksCallback(disable=QUIET, autoload=False)
    lightning_fit(Classifier(), callback_default, epochs=1, default_root_dir=tmp_path / "root")
    assert event_dirs(tmp_path) == [tmp_path / "mine", tmp_path / "root" / "tbhooks"]
    assert read_events(tmp_path / "mine").steps("eval/accuracy") == [7]


def test_resume_from_a_checkpoint_continues_the_step(tmp_path):
    callback = scalars_callback(tmp_path / "run")
    first = lightning_fit(Classifier(), callback, epochs=1)
    first.save_checkpoint(tmp_path / "one.ckpt")
    again = scalars_callback(tmp_path / "run")
    trainer = pl.Trainer(
        max_epochs=2,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[again],
    )
    trainer.fit(Classifier(), *loaders(), ckpt_path=tmp_path / "one.ckpt")
    assert again.hooks.step == trainer.global_step == 14
    events = read_events(tmp_path / "run")
    assert events.steps("train/loss") == [3, 6, 9, 12]
    assert events.steps("train/epoch_loss") == events.steps("eval/loss") == [7, 14]


# ---------------------------------------------------------------------------
# faults, interrupts, options
# ---------------------------------------------------------------------------


def test_a_faulty_plugin_is_isolated_and_the_fit_completes(tmp_path):
    faulty = Faulty("on_batch_end", after=1)  # raises from its second call on
    callback = scalars_callback(tmp_path, faulty)
    with pytest.warns(PluginFaultWarning, match="plugin 'faulty' raised in on_batch_end") as caught:
        trainer = lightning_fit(Classifier(), callback)
    assert [w.category for w in caught if issubclass(w.category, TbhooksWarning)] == [PluginFaultWarning]
    assert faulty.calls == 2
    assert set(callback.hooks.faults) == {"faulty"}
    assert trainer.state.finished and trainer.global_step == 14
    events = read_events(tmp_path)
    assert events.steps("train/loss") == [3, 6, 9, 12] and events.steps("eval/accuracy") == [7, 14]


def test_keyboard_interrupt_flushes_and_closes(tmp_path):
    module = Classifier(fail_at=9)
    recorder = HookRecorder()
    callback = scalars_callback(tmp_path)
    callback.on_attach.append(recorder.watch)
    before, sigint = hook_counts(module), signal.getsignal(signal.SIGINT)
    try:
        with pytest.raises(SystemExit) as ended:  # Lightning's answer to Ctrl+C, after on_exception
            lightning_fit(module, callback)
    finally:
        signal.signal(signal.SIGINT, sigint)  # Lightning ignores SIGINT from then on
    assert ended.value.code == 1
    assert recorder.names()[-1] == "on_exception"
    assert isinstance(recorder.of("on_exception")[0]["exception"], KeyboardInterrupt)
    assert callback.hooks.run.writer.file_writer is None, "the writer is closed"
    assert hook_counts(module) == before
    events = read_events(tmp_path)
    assert events.steps("train/loss") == [3, 6, 9] and events.steps("eval/loss") == [7]


@pytest.mark.skipif(not plugin_installed("example"), reason="tbhooks-example is not installed")
def test_disable_class_names_and_autoload_work_as_in_attach(tmp_path):
    from tbhooks_example import Example

    skip = [name for name in ("figures",) if plugin_installed(name)]  # a render worker: slow, and not the point
    options = {"disable": ["graph", "histograms", "embeddings", "images", *skip], "class_names": ["x", "y", "z"]}
    lightning_fit(Classifier(), TbhooksCallback(logdir=tmp_path / "auto", **options))
    lightning_fit(Classifier(), TbhooksCallback(logdir=tmp_path / "off", autoload=False, **options), epochs=1)
    auto, off = read_events(tmp_path / "auto"), read_events(tmp_path / "off")
    sampled = 14 // Example().every_n_steps  # 14 steps; on_batch_end is raised on its declared steps only
    expected = f"14 steps, {sampled} sampled, 2 epochs, 2 evaluations"
    assert auto.texts["example/summary/text_summary"] == [expected]
    assert not any(tag.startswith("example/") for tag in off.texts)
    assert sorted(auto.pr_curves) == ["pr_curves/x", "pr_curves/y", "pr_curves/z"]
    assert not auto.histograms and not auto.graph and "train/epoch_loss" in auto.scalars


# ---------------------------------------------------------------------------
# bad input
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "error", "match"),
    [
        ({"nosuch": 1}, TypeError, "unexpected option 'nosuch'"),
        ({"start_step": 3}, TypeError, "sets start_step from the Lightning Trainer.*ckpt_path"),
        ({"model": nn.Linear(2, 2)}, TypeError, "sets model"),
        ({"flush_secs": 0}, ValueError, "flush_secs expects"),
        ({"class_names": "abc"}, TypeError, "class_names expects"),
        ({"disable": ["scalar"]}, ValueError, "unknown plugin"),
        ({"logdir": 3}, TypeError, "logdir expects a path"),
        ({"plugins": [Scalars]}, TypeError, "pass an instance"),
    ],
)
def test_options_are_checked_when_the_callback_is_made(options, error, match):
    with pytest.raises(error, match=match):
        TbhooksCallback(**options)


def test_a_trainer_of_the_wrong_kind_gets_one_warning_and_nothing_is_logged(tmp_path):
    callback = TbhooksCallback(logdir=tmp_path)
    trainer, module, batch = object(), nn.Linear(2, 2), (torch.zeros(1, 2), torch.zeros(1))
    with pytest.warns(TbhooksWarning, match=r"pass it to that Trainer, Trainer\(callbacks=\[TbhooksCallback") as caught:
        callback.on_train_start(trainer, module)
        callback.on_train_epoch_start(trainer, module)
        callback.on_train_batch_start(trainer, module, batch, 0)
        callback.on_train_batch_end(trainer, module, torch.tensor(1.0), batch, 0)
        callback.on_validation_start(trainer, module)
        callback.on_train_end(trainer, module)
        callback.on_train_start(trainer, module)
    assert len([w for w in caught if issubclass(w.category, TbhooksWarning)]) == 1
    assert callback.hooks is None and not any(tmp_path.iterdir())


class NoForward(Classifier):
    def validation_step(self, batch, batch_idx):
        inputs, targets = batch
        return nn.functional.cross_entropy(self.get_submodule("2")(self.get_submodule("0")(inputs)), targets)


def test_a_validation_step_without_predictions_warns_what_to_do(tmp_path):
    callback = TbhooksCallback(logdir=tmp_path, disable=QUIET, autoload=False)
    with pytest.warns(TbhooksWarning) as caught:
        trainer = lightning_fit(NoForward(), callback, epochs=1)
    messages = [str(w.message) for w in caught if issubclass(w.category, TbhooksWarning)]
    assert any("call self(x) in validation_step, or return {'loss': loss, 'outputs': logits}" in m for m in messages)
    assert trainer.state.finished and "eval/accuracy" not in read_events(tmp_path).scalars


# ---------------------------------------------------------------------------
# import, docs, demo, distributed
# ---------------------------------------------------------------------------


def test_importing_tbhooks_never_imports_lightning():
    code = (
        "import sys, tbhooks, tbhooks.integrations, tbhooks.demo.loop_lightning; "
        "print([m for m in sys.modules if m.split('.')[0] in ('lightning', 'pytorch_lightning')])"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert done.stdout.strip() == "[]"


def quick_start() -> str:
    text = (ROOT / "docs" / "integrations-lightning.md").read_text()
    after = text[text.index("## Quick start") :]
    start = after.index("```python\n") + len("```python\n")
    return after[start : after.index("```", start)]


def test_the_quick_start_runs_as_written(tmp_path, monkeypatch):
    code = quick_start()
    assert len(code.strip().splitlines()) <= 21
    monkeypatch.chdir(tmp_path)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(compile(code, "integrations-lightning.md", "exec"), {"__name__": "__quick_start__"})
    metrics = ast.literal_eval(printed.getvalue().strip().splitlines()[-1])
    assert metrics["accuracy"] > 0.7 and metrics["loss"] > 0
    assert read_events(tmp_path / "runs" / "lightning").steps("eval/accuracy") == [16, 32, 48, 64]


def test_demo_loop_writes_what_the_trainer_loop_writes(tmp_path):
    from tbhooks.demo import Net, load_digits, make_loaders
    from tbhooks.demo.loop_lightning import fit_lightning
    from tbhooks.demo.loops import fit_trainer

    data = load_digits().limited(48)
    results, boards = [], []
    for name, fit in (("trainer", fit_trainer), ("lightning", fit_lightning)):
        train_loader, test_loader = make_loaders(data, 16, seed=0)
        torch.manual_seed(0)
        model = Net()
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        plugins = [Scalars(every_n_steps=1), Histograms(every_n_steps=3, activations="all")]
        options = {"plugins": plugins, "class_names": data.class_names, "autoload": False}
        if name == "trainer":
            options["progress"] = False
        device = torch.device("cpu")
        results.append(
            fit(model, optimizer, train_loader, test_loader, epochs=1, logdir=tmp_path / name, device=device, **options)
        )
        events = read_events(tmp_path / name)
        boards.append((sorted(events.scalars), sorted(events.histograms), events.steps("train/loss")))
    assert boards[0] == boards[1] and "weights/conv1.weight" in boards[0][1]
    assert results[1] == pytest.approx(results[0], rel=1e-5) and "accuracy" in results[1]


@pytest.mark.slow
def test_ddp_two_processes_one_run_and_the_whole_validation_set_once(tmp_path):
    done = subprocess.run(
        [sys.executable, str(Path(__file__).with_name("_lightning_ddp.py")), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    log_dir = tmp_path / "lit" / "version_0"
    assert event_dirs(tmp_path) == [log_dir], "one run directory, rank 0's"
    reports = [(tmp_path / f"report-{rank}.txt").read_text() for rank in (0, 1)]
    assert reports[0] == reports[1] and reports[0].endswith("step 8"), reports

    events = read_events(log_dir)
    assert "lightning/loss" in events.scalars, "Lightning's own scalars share the directory"
    assert events.values("probe/eval_samples") == [40.0, 40.0], "every rank's share, none padded"
    assert events.values("probe/rank") == [0.0, 0.0], "only rank 0 wrote"
    from _lightning_ddp import data

    labels = data()[1].tensors[1]
    assert events.values("probe/eval_label_sum") == [float(labels.sum())] * 2, "each sample gathered exactly once"
    assert events.steps("train/loss") == [2, 4, 6, 8], "64 samples / 2 ranks / batch 8 = 4 steps an epoch"
    for tag in ("pr_curves/a", "pr_curves/b", "pr_curves/c"):
        assert [table[:4, 0].sum() for _, table in events.pr_curves[tag]] == [40, 40], tag
