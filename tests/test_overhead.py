"""Self-measurement: with measure_overhead=True each plugin's time per training step is written as a scalar."""

from __future__ import annotations

import time

import torch
from _support import classification_data, loader, mlp
from torch import nn

import tbhooks
from tbhooks.testing import read_events


class Sleepy:
    name = "sleepy"

    @tbhooks.hookimpl
    def on_batch_end(self):
        time.sleep(0.004)


def test_overhead_per_plugin_is_written_per_epoch(tmp_path):
    model = mlp()
    trainer = tbhooks.Trainer(
        model,
        torch.optim.SGD(model.parameters(), lr=0.1),
        nn.functional.cross_entropy,
        logdir=tmp_path,
        plugins=[Sleepy()],
        disable=["graph", "embeddings"],
        autoload=False,
        measure_overhead=True,
    )
    trainer.fit(loader(classification_data(n=32)), epochs=2)
    events = read_events(tmp_path)
    tags = {t for t in events.scalars if t.startswith("tbhooks/overhead_ms/")}
    assert tags == {
        f"tbhooks/overhead_ms/{n}" for n in ("sleepy", "scalars", "images", "pr_curves", "histograms", "hparams")
    }
    assert events.steps("tbhooks/overhead_ms/sleepy") == [4, 8]
    # time.sleep(0.004) lasts at least 4 ms: a lower bound that holds on any machine, however loaded.
    assert all(v >= 4.0 for v in events.values("tbhooks/overhead_ms/sleepy"))
    assert all(v >= 0.0 for tag in tags for v in events.values(tag))


def test_overhead_is_off_by_default(tmp_path):
    model = mlp()
    tbhooks.Trainer(
        model, torch.optim.SGD(model.parameters(), lr=0.1), nn.functional.cross_entropy, logdir=tmp_path, autoload=False
    ).fit(loader(classification_data(n=16)), epochs=1)
    assert not [t for t in read_events(tmp_path).scalars if t.startswith("tbhooks/")]
