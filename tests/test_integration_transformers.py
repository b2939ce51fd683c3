"""The Hugging Face adapter: tbhooks' plugins inside transformers.Trainer, through TbhooksCallback."""

from __future__ import annotations

import ast
import contextlib
import io
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from _support import QUIET, StopAt, hook_counts
from torch import nn
from torch.utils.data import TensorDataset

import tbhooks
from tbhooks import PluginFaultWarning, TbhooksWarning
from tbhooks.default_plugins.scalars import Scalars
from tbhooks.testing import HookRecorder, read_events

pytest.importorskip("transformers")
import transformers
from transformers import BertConfig, BertForSequenceClassification, Trainer, TrainerCallback, TrainingArguments
from transformers.utils import ModelOutput

from tbhooks.demo.text import TokenDataset, fit_transformers, text_data, tiny_bert
from tbhooks.integrations.transformers import TbhooksCallback

# For the tests whose run has the graph plugin on (the main run's, as its fixture is set up in the first of
# them): torch.jit.trace reads every attribute of every submodule, and transformers' deprecated
# `is_gradient_checkpointing` property warns when read.
GRAPH_TRACE = pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")

ROOT = Path(__file__).resolve().parent.parent
CLASSES, LENGTH = 3, 16
TRAIN, EVAL, BATCH, EVAL_BATCH = 64, 48, 8, 16
"""8 training steps an epoch; 3 evaluation batches of 16 (all full: HF's eval_loss weighs each as full)."""
EVERY = 4


def token_data(n: int, seed: int) -> TensorDataset:
    """Token ids in [5, 50) with the label's keyword (token 2 + label) at three places: learnable."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(CLASSES, (n,), generator=generator)
    tokens = torch.randint(5, 50, (n, LENGTH), generator=generator)
    places = torch.rand(n, LENGTH, generator=generator).argsort(dim=1)[:, :3]
    tokens[torch.arange(n).unsqueeze(1), places] = 2 + labels.unsqueeze(1)
    return TensorDataset(tokens, labels)


def bert(seed: int = 0, cls: type[BertForSequenceClassification] = BertForSequenceClassification) -> nn.Module:
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=50,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=32,
        num_labels=CLASSES,
    )
    return cls(config)


def accuracy(prediction: transformers.EvalPrediction) -> dict[str, float]:
    return {"accuracy": float((np.argmax(prediction.predictions, axis=-1) == prediction.label_ids).mean())}


def hf_trainer(tmp_path: Path, callbacks: list, model: nn.Module | None = None, **arguments) -> Trainer:
    options = {
        "output_dir": str(tmp_path / "hf"),
        "use_cpu": True,
        "report_to": "none",
        "save_strategy": "no",
        "disable_tqdm": True,
        "learning_rate": 1e-3,
        "per_device_train_batch_size": BATCH,
        "per_device_eval_batch_size": EVAL_BATCH,
        **arguments,
    }
    return Trainer(
        model=bert() if model is None else model,
        args=TrainingArguments(**options),
        train_dataset=TokenDataset(token_data(TRAIN, seed=0)),
        eval_dataset=TokenDataset(token_data(EVAL, seed=1)),
        callbacks=callbacks,
        compute_metrics=accuracy,
    )


def quiet(logdir: Path, *plugins: object, **options) -> TbhooksCallback:
    """A callback with the scalars every EVERY steps, the given plugins, and every other built-in off."""
    return TbhooksCallback(
        logdir=logdir, plugins=[*plugins, Scalars(every_n_steps=EVERY)], disable=QUIET, autoload=False, **options
    )


class Recorder:
    """Records what on_batch_end and on_eval_batch_end receive, every EVERY steps."""

    name = "recorder"

    def __init__(self) -> None:
        self.train: list[tuple[int, dict, torch.Tensor, torch.Tensor, torch.Tensor]] = []
        self.eval: list[tuple[int, dict, torch.Tensor, torch.Tensor, torch.Tensor]] = []
        self.grads: list[bool] = []

    def batch_end_due(self, step: int) -> bool:
        return step % EVERY == 0

    @tbhooks.hookimpl
    def on_batch_end(self, run, step, inputs, targets, outputs, loss) -> None:
        self.train.append((step, inputs, targets, outputs, loss))
        self.grads.append(all(p.grad is not None for p in run.model.parameters() if p.requires_grad))

    @tbhooks.hookimpl
    def on_eval_batch_end(self, step, inputs, targets, outputs, loss) -> None:
        self.eval.append((step, inputs, targets, outputs, loss))


class Probe(TrainerCallback):
    """Placed after TbhooksCallback: the forward hooks on the model at each step's start and each eval batch."""

    def __init__(self) -> None:
        self.at_step: dict[int, int] = {}
        self.at_eval: list[int] = []

    def on_step_begin(self, args, state, control, model=None, **kwargs):
        self.at_step[state.global_step + 1] = len(model._forward_hooks)

    def on_prediction_step(self, args, state, control, model=None, **kwargs):
        self.at_eval.append(len(model._forward_hooks))


@pytest.fixture(scope="module")
def main_run(tmp_path_factory):
    """Two epochs with every built-in but histograms' default interval, entry points off; HF evaluates after."""
    logdir = tmp_path_factory.mktemp("main")
    recorder, probe, events = Recorder(), Probe(), HookRecorder()
    callback = TbhooksCallback(logdir=logdir, plugins=[Scalars(every_n_steps=EVERY), recorder], autoload=False)
    callback.on_attach.append(events.watch)
    trainer = hf_trainer(logdir, [callback, probe], num_train_epochs=2, eval_strategy="epoch", logging_steps=EVERY)
    before = hook_counts(trainer.model)
    with callback:
        trainer.train()
    after = hook_counts(trainer.model)
    return SimpleNamespace(
        logdir=logdir,
        trainer=trainer,
        callback=callback,
        recorder=recorder,
        probe=probe,
        events=events,
        hooks=(before, after),
        hf_eval=trainer.evaluate(),  # the same model state as the last evaluation of the fit
        read=read_events(logdir),
    )


# ---------------------------------------------------------------------------
# the tags and values
# ---------------------------------------------------------------------------


@GRAPH_TRACE
def test_the_tag_set_and_the_eval_metrics_equal_hfs_evaluate(main_run):
    events, hf = main_run.read, main_run.hf_eval
    assert sorted(tag for tag in events.scalars if not tag.startswith("_hparams_")) == [
        "eval/accuracy",
        "eval/loss",
        "hparams/eval_accuracy",
        "hparams/eval_loss",
        "train/loss",  # no train/epoch_loss: the loss of only the steps a plugin was due is no epoch's mean
        "train/lr/group0",  # HF's two groups: with and without weight decay
        "train/lr/group1",
    ]
    assert sorted(events.texts) == ["hparams/model/text_summary", "hparams/summary/text_summary"]
    assert sorted(events.pr_curves) == ["pr_curves/0", "pr_curves/1", "pr_curves/2"]
    assert events.graph and not events.images and not events.histograms  # token inputs are no images
    assert sorted(p.name for p in main_run.logdir.glob("000*")) == ["00008", "00016"]  # the embeddings
    assert events.steps("eval/loss") == [8, 16] and events.steps("train/loss") == [4, 8, 12, 16]
    assert events.values("eval/loss")[-1] == pytest.approx(hf["eval_loss"], rel=1e-6)
    assert events.values("eval/accuracy")[-1] == pytest.approx(hf["eval_accuracy"], abs=1e-6)
    first = next(log for log in main_run.trainer.state.log_history if "eval_loss" in log)
    assert first["step"] == 8 and events.values("eval/loss")[0] == pytest.approx(first["eval_loss"], rel=1e-6)
    assert main_run.callback.hooks.last_metrics == pytest.approx(
        {"loss": hf["eval_loss"], "accuracy": hf["eval_accuracy"]}
    )
    hparams = main_run.callback.hooks.run.hparams
    assert {key: hparams[key] for key in ("model", "optimizer", "lr", "epochs", "batch_size")} == {
        "model": "BertForSequenceClassification",
        "optimizer": "AdamW",
        "lr": 1e-3,
        "epochs": 2,
        "batch_size": BATCH,
    }
    assert events.values("train/lr/group0") == pytest.approx([1e-3 * (1 - s / 16) for s in (3, 7, 11, 15)])


@GRAPH_TRACE
def test_the_lifecycle_is_tbhooks_order(main_run):
    epoch = ["on_epoch_start", "on_batch_end", "on_epoch_end", "on_eval_start", "on_eval_batch_end", "on_eval"]
    assert main_run.events.collapsed() == ["on_fit_start", "on_capture_request", *epoch, *epoch, "on_fit_end"]
    assert main_run.events.names().count("on_eval_batch_end") == 6


@GRAPH_TRACE
def test_the_model_is_hooked_only_on_due_steps_and_during_evaluation(main_run):
    probe = main_run.probe
    due = {1, *range(EVERY, 17, EVERY)}  # graph and images want the first batch
    assert sorted(step for step, count in probe.at_step.items() if count) == sorted(due)
    assert set(probe.at_step.values()) == {0, 1} and len(probe.at_step) == 16
    assert probe.at_eval == [1] * 6 + [0] * 3  # 3 batches, 2 evaluations; then trainer.evaluate(), not logged
    before, after = main_run.hooks
    assert after == before and not any(any(counts) for counts in after)


@GRAPH_TRACE
def test_inputs_labels_and_logits_reach_the_plugins(main_run):
    train = token_data(TRAIN, seed=0)
    label_of = {tuple(tokens.tolist()): int(label) for tokens, label in zip(*train.tensors, strict=True)}
    records = main_run.recorder.train
    assert [step for step, *_ in records] == [4, 8, 12, 16]
    assert main_run.recorder.grads == [True] * 4  # raised before HF zeroes the gradients
    for _, inputs, targets, outputs, loss in records:
        assert sorted(inputs) == ["input_ids"] and inputs["input_ids"].shape == (BATCH, LENGTH)
        assert targets.dtype == torch.long and outputs.shape == (BATCH, CLASSES) and loss.ndim == 0
        assert targets.tolist() == [label_of[tuple(row.tolist())] for row in inputs["input_ids"]]
        assert loss == pytest.approx(float(nn.functional.cross_entropy(outputs, targets)), rel=1e-5)
    evaluated = main_run.recorder.eval
    assert [step for step, *_ in evaluated] == [8, 8, 8, 16, 16, 16]
    assert torch.equal(
        torch.cat([targets for _, _, targets, _, _ in evaluated[3:]]), token_data(EVAL, seed=1).tensors[1]
    )
    assert all(outputs.shape == (EVAL_BATCH, CLASSES) for *_, outputs, _ in evaluated)


def test_train_loss_and_lr_equal_what_hf_logs_at_each_step(tmp_path):
    callback = TbhooksCallback(plugins=[Scalars(every_n_steps=1)], disable=QUIET, autoload=False)  # default logdir
    trainer = hf_trainer(tmp_path, [callback], max_steps=6, logging_steps=1)
    with callback:
        trainer.train()
    logs = [log for log in trainer.state.log_history if "loss" in log]
    (run,) = (tmp_path / "hf" / "runs").glob("*_tbhooks")
    events = read_events(run)
    assert events.steps("train/loss") == [log["step"] for log in logs] == [1, 2, 3, 4, 5, 6]
    assert events.values("train/loss") == pytest.approx([log["loss"] for log in logs], rel=1e-6)
    assert events.values("train/lr/group0") == pytest.approx([log["learning_rate"] for log in logs], rel=1e-6)


def test_step_is_the_optimizer_step_under_gradient_accumulation(tmp_path):
    model, micro = bert(), []
    model.register_forward_hook(lambda module, args, out: micro.append(out.loss.item()) if module.training else None)
    callback = TbhooksCallback(logdir=tmp_path, plugins=[Scalars(every_n_steps=1)], disable=QUIET, autoload=False)
    trainer = hf_trainer(tmp_path, [callback], model=model, max_steps=4, gradient_accumulation_steps=2, logging_steps=1)
    with callback:
        trainer.train()
    events = read_events(tmp_path)
    assert callback.hooks.step == trainer.state.global_step == 4 and events.steps("train/loss") == [1, 2, 3, 4]
    pairs = np.array(micro).reshape(4, 2)
    assert events.values("train/loss") == pytest.approx(pairs.mean(axis=1), rel=1e-6)
    # What the docs say of HF's own logged loss: BERT takes loss kwargs, so HF sums the micro-batch means.
    assert [log["loss"] for log in trainer.state.log_history[:4]] == pytest.approx(pairs.sum(axis=1), rel=1e-6)


# ---------------------------------------------------------------------------
# faults, interrupts, options as in attach
# ---------------------------------------------------------------------------


class Fails:
    name = "fails"

    def __init__(self, error: type[BaseException], at: int) -> None:
        self.error, self.at, self.raised = error, at, False

    @tbhooks.hookimpl
    def on_batch_end(self, step) -> None:
        if step == self.at and not self.raised:
            self.raised = True
            raise self.error("boom")


def test_a_faulty_plugin_is_isolated_and_the_fit_completes(tmp_path):
    callback = quiet(tmp_path, Fails(RuntimeError, at=2))
    trainer = hf_trainer(tmp_path, [callback], max_steps=8)
    with pytest.warns(PluginFaultWarning, match="plugin 'fails' raised in on_batch_end"), callback:
        trainer.train()
    assert trainer.state.global_step == 8 and list(callback.hooks.faults) == ["fails"]
    assert read_events(tmp_path).steps("train/loss") == [4, 8]


def test_keyboard_interrupt_flushes_and_closes_the_writer(tmp_path):
    callback, events = quiet(tmp_path, Fails(KeyboardInterrupt, at=6)), HookRecorder()
    callback.on_attach.append(events.watch)
    trainer = hf_trainer(tmp_path, [callback], max_steps=8)
    with pytest.raises(KeyboardInterrupt), callback:
        trainer.train()
    assert events.names()[-1] == "on_exception" and "on_fit_end" not in events.names()
    assert callback.hooks.run.writer.all_writers is None, "the SummaryWriter is closed"
    assert read_events(tmp_path).steps("train/loss") == [4]
    assert not any(any(counts) for counts in hook_counts(trainer.model))


def test_a_stop_request_ends_training_and_the_run_ends_as_a_fit_does(tmp_path):
    callback, events = quiet(tmp_path, StopAt(3)), HookRecorder()
    callback.on_attach.append(events.watch)
    trainer = hf_trainer(tmp_path, [callback], max_steps=8)
    with callback:
        trainer.train()
    assert trainer.state.global_step == callback.hooks.step == 3
    assert events.collapsed()[-3:] == ["on_batch_end", "on_epoch_end", "on_fit_end"]


def test_a_run_left_open_by_an_error_is_closed_by_the_next_train(tmp_path):
    plugins = [Fails(ValueError, at=3), Scalars(every_n_steps=1)]
    callback = TbhooksCallback(plugins=plugins, disable=QUIET, autoload=False, strict=True)
    trainer = hf_trainer(tmp_path, [callback], max_steps=4)
    with pytest.raises(ValueError, match="boom"):
        trainer.train()  # no `with callback:`: HF calls no callback on the way out
    first = callback.hooks
    assert callback.running and first.run.writer.all_writers is not None
    trainer.train()  # Fails raises once
    assert first.run.writer.all_writers is None and callback.hooks.run.writer.all_writers is None
    # Each train() its own default directory (a "-2" suffix when both start in the same second).
    assert set((tmp_path / "hf" / "runs").iterdir()) == {first.logdir, callback.hooks.logdir}
    assert read_events(first.logdir).steps("train/loss") == [1, 2, 3]  # scalars (called first) logged step 3
    assert read_events(callback.hooks.logdir).steps("train/loss") == [1, 2, 3, 4]


@GRAPH_TRACE
def test_disable_class_names_and_entry_points_work_as_in_attach(tmp_path, main_run):
    from tbhooks_example import Example

    names = ["neg", "neu", "pos"]
    callback = TbhooksCallback(logdir=tmp_path, disable=["graph", "embeddings", "hparams"], class_names=names)
    trainer = hf_trainer(tmp_path, [callback], max_steps=6, eval_strategy="steps", eval_steps=6)
    with callback:
        trainer.train()
    events = read_events(tmp_path)
    assert sorted(events.pr_curves) == ["pr_curves/neg", "pr_curves/neu", "pr_curves/pos"]
    assert not events.graph and not (tmp_path / "projector_config.pbtxt").exists()
    sampled = 6 // Example().every_n_steps  # 6 steps; on_batch_end is raised on its declared steps only
    assert events.texts["example/summary/text_summary"] == [f"6 steps, {sampled} sampled, 1 epochs, 1 evaluations"]
    assert list(events.images) == ["figures/confusion_matrix"]  # the predictions figure wants images
    assert not any(tag.startswith(("example/", "figures/")) for tag in [*main_run.read.texts, *main_run.read.images])


# ---------------------------------------------------------------------------
# bad input
# ---------------------------------------------------------------------------


@dataclass
class ScoresOutput(ModelOutput):
    loss: torch.Tensor | None = None
    scores: torch.Tensor | None = None


class ScoresBert(BertForSequenceClassification):
    """A classifier whose output names its predictions "scores", not "logits"."""

    def forward(self, input_ids=None, labels=None, **kwargs):
        output = super().forward(input_ids=input_ids, labels=labels)
        return ScoresOutput(loss=output.loss, scores=output.logits)


def test_outputs_without_logits_warn_once_naming_the_output_option(tmp_path):
    callback = quiet(tmp_path / "plain", Recorder())
    trainer = hf_trainer(
        tmp_path, [callback], model=bert(cls=ScoresBert), max_steps=8, eval_strategy="steps", eval_steps=4
    )
    with pytest.warns(TbhooksWarning) as caught, callback:
        trainer.train()
    (warning,) = [w for w in caught if issubclass(w.category, TbhooksWarning)]
    assert "['loss', 'scores']" in str(warning.message) and "TbhooksCallback(output='<key>')" in str(warning.message)
    events = read_events(tmp_path / "plain")
    assert trainer.state.global_step == 8 and events.steps("train/loss") == [4, 8] and "eval/loss" not in events.scalars
    assert [outputs for _, _, _, outputs, _ in callback.options["plugins"][0].train] == [None, None]

    callback = quiet(tmp_path / "scores", output="scores")  # no warning: pytest turns one into an error
    trainer = hf_trainer(
        tmp_path,
        [callback],
        model=bert(cls=ScoresBert),
        max_steps=4,
        eval_strategy="steps",
        eval_steps=4,
        eval_on_start=True,
    )
    with callback:
        trainer.train()
    assert read_events(tmp_path / "scores").steps("eval/accuracy") == [0, 4]


@pytest.mark.parametrize(
    ("options", "error", "match"),
    [
        ({"nosuch": 1}, TypeError, "unexpected option 'nosuch'"),
        ({"optimizer": None}, TypeError, "takes optimizer from the HF Trainer"),
        ({"start_step": 3}, TypeError, "takes start_step from the HF Trainer"),
        ({"output": 2.5}, TypeError, "output expects"),
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


def test_a_host_of_the_wrong_kind_gets_one_warning_and_nothing_is_logged(tmp_path):
    callback = TbhooksCallback(logdir=tmp_path)
    args, state, control = object(), object(), transformers.TrainerControl()
    with pytest.warns(TbhooksWarning, match=r"pass it to transformers.Trainer\(callbacks=\[TbhooksCallback") as caught:
        for event in ("on_train_begin", "on_epoch_begin", "on_step_begin", "on_optimizer_step", "on_step_end"):
            getattr(callback, event)(args, state, control, model=nn.Linear(2, 2))
        callback.on_train_begin(
            TrainingArguments(output_dir=str(tmp_path)), transformers.TrainerState(), control, model="bert"
        )
        callback.on_train_end(args, state, control)
    assert len([w for w in caught if issubclass(w.category, TbhooksWarning)]) == 1
    assert callback.hooks is None and not any(tmp_path.iterdir())


# ---------------------------------------------------------------------------
# import, docs, demo
# ---------------------------------------------------------------------------


def test_importing_tbhooks_never_imports_transformers():
    code = (
        "import sys, tbhooks, tbhooks.integrations, tbhooks.demo.text; "
        "print([m for m in sys.modules if m.split('.')[0] in ('transformers', 'accelerate')])"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert done.stdout.strip() == "[]"


DOC = ROOT / "docs" / "integrations-transformers.md"


def quick_start() -> str:
    text = DOC.read_text()
    after = text[text.index("## Quick start") :]
    start = after.index("```python\n") + len("```python\n")
    return after[start : after.index("```", start)]


@GRAPH_TRACE
def test_the_quick_start_runs_as_written(tmp_path, monkeypatch):
    code = quick_start()
    assert len(code.strip().splitlines()) <= 25
    monkeypatch.chdir(tmp_path)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(compile(code, str(DOC), "exec"), {"__name__": "__quick_start__"})
    metrics = ast.literal_eval(printed.getvalue().strip().splitlines()[-1])
    assert metrics["accuracy"] > 0.5 and metrics["loss"] > 0  # 4 classes: chance is 0.25
    events = read_events(tmp_path / "runs" / "hf")
    assert events.steps("eval/accuracy") == [38, 76] and events.values("eval/accuracy")[-1] == pytest.approx(
        metrics["accuracy"]
    )
    assert "figures/confusion_matrix" in events.images and "example/summary/text_summary" in events.texts


def test_the_docs_stay_short_and_name_every_callback_point():
    text = DOC.read_text()
    assert len(text) < 6000
    for point in (
        "on_train_begin",
        "on_epoch_begin",
        "on_step_begin",
        "on_substep_end",
        "on_pre_optimizer_step",
        "on_optimizer_step",
        "on_step_end",
        "on_epoch_end",
        "on_prediction_step",
        "on_evaluate",
        "on_log",
        "on_train_end",
    ):
        assert f"| `{point}`" in text, point


def test_the_text_data_is_small_balanced_and_seeded():
    data = text_data()
    tokens, labels = data.train.tensors
    assert data.name == "text" and data.class_names == ["sports", "science", "music", "travel"]
    assert tokens.shape == (1200, 16) and tokens.dtype == torch.long and len(data.test) == 300
    assert (tokens[:, 0] == 1).all() and int(tokens.max()) < 50 and int(tokens.min()) >= 1
    assert torch.bincount(labels).min() > 250
    assert torch.equal(text_data().test.tensors[0], data.test.tensors[0])
    assert not torch.equal(text_data(seed=1).train.tensors[0], tokens)


def test_the_demo_loop_learns_the_text_task(tmp_path):
    from tbhooks.demo.data import make_loaders
    from tbhooks.demo.loops import LEARNING_RATE

    data = text_data()
    torch.manual_seed(0)
    model = tiny_bert(classes=len(data.class_names))
    optimizer = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE)
    train_loader, test_loader = make_loaders(data, 32, seed=0)
    metrics = fit_transformers(
        model,
        optimizer,
        train_loader,
        test_loader,
        epochs=2,
        logdir=tmp_path,
        device=torch.device("cpu"),
        plugins=[Scalars(every_n_steps=19)],
        disable=QUIET,
        class_names=data.class_names,
        autoload=False,
    )
    events = read_events(tmp_path)
    assert events.steps("eval/accuracy") == [38, 76] and events.steps("train/loss") == [19, 38, 57, 76]
    assert metrics == pytest.approx(
        {"loss": events.values("eval/loss")[-1], "accuracy": events.values("eval/accuracy")[-1]}
    )
    assert metrics["accuracy"] > 0.8  # 4 classes: chance is 0.25
    assert events.values("train/lr") == pytest.approx([LEARNING_RATE] * 4)  # the given optimizer, constant
