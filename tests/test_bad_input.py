"""Bad input gets a clear error or one warning, never a deep traceback, and nothing logged is lost.

Each test here is a row of the README's "Bad input" table.
"""

from __future__ import annotations

import logging
import math

import pytest
import torch
from _support import classification_data, loader, mlp
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import tbhooks
import tbhooks.distributed
from tbhooks import NonFiniteLossWarning, TbhooksWarning
from tbhooks.default_plugins.scalars import Scalars
from tbhooks.demo.cli import resolve_demo_device
from tbhooks.demo.errors import DemoError
from tbhooks.testing import read_events

QUIET = ["graph", "images", "embeddings", "hparams"]


def make(tmp_path, model=None, loss_fn=nn.functional.cross_entropy, **options):
    model = model or mlp()
    options.setdefault("disable", QUIET)
    return tbhooks.Trainer(
        model, torch.optim.SGD(model.parameters(), lr=0.1), loss_fn, logdir=tmp_path, autoload=False, **options
    )


def nan_after(step: int):
    calls = {"n": 0}

    def loss_fn(prediction, targets):
        calls["n"] += 1
        loss = nn.functional.cross_entropy(prediction, targets)
        return loss * float("nan") if calls["n"] >= step else loss

    return loss_fn


def test_nan_loss_is_logged_as_is_and_warned_once(tmp_path):
    fit = make(tmp_path, loss_fn=nan_after(5), plugins=[Scalars(every_n_steps=2)])
    with pytest.warns(NonFiniteLossWarning, match=r"train/loss is nan at step 6; it is logged as is") as caught:
        fit.fit(loader(classification_data(n=64)), epochs=2)
    assert len([w for w in caught if "train/loss" in str(w.message)]) == 1
    events = read_events(tmp_path)
    assert events.steps("train/loss") == [2, 4, 6, 8, 10, 12, 14, 16], "training went on"
    values = events.values("train/loss")
    assert all(math.isfinite(v) for v in values[:2]) and all(math.isnan(v) for v in values[2:])


def test_nan_loss_can_stop_the_run(tmp_path):
    fit = make(tmp_path, loss_fn=nan_after(5), plugins=[Scalars(every_n_steps=2)], stop_on_nonfinite=True)
    with pytest.warns(NonFiniteLossWarning, match="stopping the run"):
        fit.fit(loader(classification_data(n=64)), epochs=2)
    assert fit.step == 6 and fit.hooks.run.stop_reason == "train/loss is nan at step 6"
    assert read_events(tmp_path).steps("train/loss") == [2, 4, 6], "what was logged is kept"


def test_labels_outside_the_classes_warn_once_and_skip_classification(tmp_path):
    inputs, labels = classification_data(n=24).tensors
    data = DataLoader(TensorDataset(inputs, labels + 5), batch_size=8)  # labels 5..7 for 3 classes
    fit = make(tmp_path, loss_fn=lambda p, t: p.pow(2).mean())
    with pytest.warns(TbhooksWarning, match=r"labels outside \[0, 3\) \(min 5, max 7\)") as caught:
        metrics = fit.fit(data, epochs=1, eval_loader=data)
    assert len(caught) == 1
    assert "accuracy" not in metrics and "loss" in metrics
    assert not read_events(tmp_path).pr_curves


def test_regression_outputs_skip_classification_plugins_with_an_info_line(tmp_path, caplog):
    inputs = torch.randn(32, 6)
    data = DataLoader(TensorDataset(inputs, inputs.sum(1, keepdim=True)), batch_size=8)
    fit = make(tmp_path, model=nn.Linear(6, 1), loss_fn=nn.functional.mse_loss)
    with caplog.at_level(logging.INFO, logger="tbhooks"):
        metrics = fit.fit(data, epochs=2, eval_loader=data)
    assert set(metrics) == {"loss"}
    skipped = [r.message for r in caplog.records if "skipped: outputs are not class scores" in r.message]
    assert any(m.startswith("tbhooks: accuracy skipped") for m in skipped)
    assert any(m.startswith("tbhooks: pr_curves skipped") for m in skipped)
    assert len(skipped) == len(set(skipped)), "one line per plugin, not one per evaluation"
    assert read_events(tmp_path).steps("eval/loss") == [4, 8]


def test_empty_loaders_warn_and_the_run_completes(tmp_path):
    empty = DataLoader(TensorDataset(torch.zeros(0, 6), torch.zeros(0, dtype=torch.long)), batch_size=4)
    fit = make(tmp_path)
    with pytest.warns(TbhooksWarning) as caught:
        metrics = fit.fit(empty, epochs=2, eval_loader=empty)
    messages = sorted(str(w.message) for w in caught)
    assert len(messages) == 2
    assert "the evaluation saw no batch" in messages[0] and "training loader yielded no batch" in messages[1]
    assert metrics == {}


def test_unwritable_logdir_fails_before_training(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    model = mlp()
    with pytest.raises(ValueError, match=r"logdir='.*file/run' cannot be written"):
        make(blocker / "run", model=model).fit(loader(classification_data()), epochs=1)
    with pytest.raises(TypeError, match="logdir expects a path"):
        tbhooks.attach(model, logdir=3)


def test_models_taking_dicts_and_keyword_arguments(tmp_path):
    class KwModel(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = mlp()

        def forward(self, *, features, scale):
            return self.body(features) * scale

    inputs, labels = classification_data(n=16).tensors
    batches = [({"features": inputs[i : i + 8], "scale": torch.tensor(2.0)}, labels[i : i + 8]) for i in (0, 8)]
    metrics = make(tmp_path, model=KwModel()).fit(batches, epochs=1, eval_loader=batches)
    assert set(metrics) == {"loss", "accuracy"}


def test_cuda_without_a_gpu_is_a_value_error_at_construction():
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    model = mlp()
    with pytest.raises(ValueError, match=r"device 'cuda': no CUDA device is available here; pass device='cpu'"):
        tbhooks.Trainer(model, torch.optim.SGD(model.parameters(), lr=0.1), nn.functional.mse_loss, device="cuda")


@pytest.mark.parametrize("device", ["auto", "cuda", torch.device("cuda")])
def test_a_torchrun_rank_without_a_gpu_of_its_own_is_told_so(monkeypatch, device):
    # Where there is a GPU, the real count; without one (CI), this process is told it sees one: the check
    # needs a count, not a device, and the only other way to see the error is torchrun on a GPU machine.
    if not torch.cuda.is_available():
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    count = torch.cuda.device_count()
    monkeypatch.setenv("LOCAL_RANK", str(count))  # one rank more than there are GPUs
    model = mlp()
    with pytest.raises(ValueError, match=rf"device '(auto|cuda)': this process is local rank {count} \(LOCAL_RANK\)"):
        tbhooks.Trainer(model, torch.optim.SGD(model.parameters(), lr=0.1), nn.functional.mse_loss, device=device)
    with pytest.raises(DemoError, match=rf"--device auto: .* sees {count} CUDA device.*\(--device cpu\)$"):
        resolve_demo_device("auto")
    monkeypatch.setenv("LOCAL_RANK", str(count - 1))  # the last rank that has one
    assert tbhooks.distributed.resolve_device(device) == torch.device("cuda", count - 1)


def test_trainer_arguments_are_checked(tmp_path):
    model = mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(TypeError, match="model expects a torch.nn.Module, got function"):
        tbhooks.Trainer(lambda x: x, optimizer, nn.functional.mse_loss)
    with pytest.raises(TypeError, match="optimizer expects a torch.optim.Optimizer"):
        tbhooks.Trainer(model, "sgd", nn.functional.mse_loss)
    with pytest.raises(ValueError, match="device expects 'auto', 'cpu', 'cuda' or 'cuda:N', got 'gpu'"):
        tbhooks.Trainer(model, optimizer, nn.functional.mse_loss, device="gpu")
    fit = make(tmp_path, model=model)
    with pytest.raises(ValueError, match="epochs expects an int >= 0, got -1"):
        fit.fit(loader(classification_data()), epochs=-1)
    with pytest.raises(TypeError, match=r"each batch must be \(inputs, targets\)"):
        fit.fit([torch.zeros(4, 6)], epochs=1)
    with pytest.raises(TypeError, match="class_names expects a sequence of names, got str"):
        tbhooks.attach(model, logdir=tmp_path, class_names="cat,dog")
    with pytest.raises(ValueError, match="flush_secs expects a number of seconds > 0"):
        tbhooks.attach(model, logdir=tmp_path, flush_secs=0)
    with pytest.raises(TypeError, match="output expects a dict key"):
        tbhooks.attach(model, logdir=tmp_path, output=1.5)
    with pytest.raises(TypeError, match=r"output expects a dict key \(str\), a tuple index \(int\).*got bool"):
        tbhooks.attach(model, logdir=tmp_path, output=True)  # bool is an int: it would pick output 1 unnoticed
