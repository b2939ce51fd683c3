"""The schedule contract with everything ``make`` installs: on_batch_end is raised on due steps only."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import tbhooks
from tbhooks.testing import HookRecorder


def test_with_every_installed_plugin_autoloaded_the_event_is_raised_only_on_due_steps(tmp_path, monkeypatch):
    monkeypatch.delenv("TBHOOKS_DISABLE_PLUGINS", raising=False)
    monkeypatch.delenv("TBHOOKS_DISABLE_PLUGIN_AUTOLOAD", raising=False)
    torch.manual_seed(0)
    data = DataLoader(TensorDataset(torch.randn(480, 1, 8, 8), torch.randint(0, 3, (480,))), batch_size=4)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 3))
    trainer = tbhooks.Trainer(
        model, torch.optim.SGD(model.parameters(), lr=0.1), nn.functional.cross_entropy, logdir=tmp_path
    )
    recorder = HookRecorder().install(trainer)
    trainer.fit(data, epochs=1)  # 120 steps

    pm = trainer.hooks.plugin_manager
    subscribed = {impl.plugin_name for impl in pm.hook.on_batch_end.get_hookimpls()}
    # Built-ins and the installed distributions' plugins alike declare their schedule.
    assert {"scalars", "graph", "images", "histograms", "example"} <= subscribed
    assert all(callable(getattr(pm.get_plugin(name), "batch_end_due", None)) for name in subscribed)
    # graph and images: the first step; scalars: every 50th; example: every 100th; histograms: every 1000th.
    assert [call["step"] for call in recorder.of("on_batch_end")] == [1, 50, 100]
    assert trainer.hooks.faults == {}
