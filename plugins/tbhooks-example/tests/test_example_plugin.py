"""The example plugin as a user gets it: installed, found by its entry point, in a real Trainer fit."""

from __future__ import annotations

from importlib.metadata import entry_points

import torch
from tbhooks_example import Example
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import tbhooks
from tbhooks.manager import BUILTIN_PLUGINS
from tbhooks.testing import read_events

# Every other plugin a run would load (built-ins, other installed distributions):
# this test looks at the example plugin alone, whatever else is installed.
OTHERS = [*BUILTIN_PLUGINS, *(ep.name for ep in entry_points(group="tbhooks") if ep.name != "example")]


# torch's SummaryWriter.add_text stores the text under "<tag>/text_summary".
TAG = "example/summary/text_summary"


def fit(logdir: object, *, epochs: int, evaluate: bool) -> tuple[tbhooks.Trainer, int]:
    """A tiny fit with autoload on; returns the trainer and the number of batches per epoch."""
    torch.manual_seed(0)
    train = DataLoader(TensorDataset(torch.randn(300, 3), torch.randint(0, 2, (300,))), batch_size=4)
    test = DataLoader(TensorDataset(torch.randn(6, 3), torch.randint(0, 2, (6,))), batch_size=4)
    model = nn.Linear(3, 2)
    trainer = tbhooks.Trainer(
        model,
        torch.optim.SGD(model.parameters(), lr=0.1),
        nn.CrossEntropyLoss(),
        logdir=logdir,
        device="cpu",
        progress=False,
        autoload=True,
        disable=OTHERS,
    )
    trainer.fit(train, epochs=epochs, eval_loader=test if evaluate else None)
    return trainer, len(train)


def test_summary_counts_batches_epochs_and_evaluations(tmp_path, monkeypatch):
    monkeypatch.delenv("TBHOOKS_DISABLE_PLUGINS", raising=False)
    trainer, per_epoch = fit(tmp_path, epochs=2, evaluate=True)

    assert isinstance(trainer.hooks.plugin_manager.get_plugin("example"), Example)  # came from the entry point
    assert per_epoch == 75
    # 150 steps, on_batch_end raised at its declared steps only: 100.
    assert read_events(tmp_path).texts[TAG] == ["150 steps, 1 sampled, 2 epochs, 2 evaluations"]


def test_each_run_counts_from_zero(tmp_path, monkeypatch):
    # The entry point is a factory, so a second fit in the same process gets a new plugin:
    # a shared one would report 2 + 1 epochs here.
    monkeypatch.delenv("TBHOOKS_DISABLE_PLUGINS", raising=False)
    fit(tmp_path / "first", epochs=2, evaluate=True)
    fit(tmp_path / "second", epochs=1, evaluate=False)

    assert read_events(tmp_path / "second").texts[TAG] == ["75 steps, 0 sampled, 1 epochs, 0 evaluations"]


def test_the_interval_is_checked():
    import pytest

    for bad in (0, 2.5, True):
        with pytest.raises(ValueError, match=r"Example\(every_n_steps=...\) expects an int >= 1"):
            Example(every_n_steps=bad)
