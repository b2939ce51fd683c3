"""On CUDA, steps where nothing is logged never synchronise the host with the device.

Skipped without a GPU (CI has none); run it on a GPU machine with `pytest -m cuda`.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import tbhooks
from tbhooks.default_plugins.histograms import Histograms
from tbhooks.default_plugins.scalars import Scalars

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def test_steps_that_log_nothing_do_not_sync(tmp_path):
    device = torch.device("cuda")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 6, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(6 * 12 * 12, 10)).to(
        device
    )
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    batches = [(torch.randn(4, 1, 28, 28, device=device), torch.randint(0, 10, (4,), device=device)) for _ in range(8)]
    plugins = [Scalars(every_n_steps=10), Histograms(every_n_steps=10, activations=["1"])]
    with tbhooks.attach(model, logdir=tmp_path, optimizer=optimizer, plugins=plugins, autoload=False) as hooks:
        hooks.epoch_start()
        for index in range(25):
            inputs, targets = batches[index % len(batches)]
            logs = hooks.step + 1 in (1, 10, 20)  # step 1: graph and image grid; 10, 20: scalars, histograms
            torch.cuda.synchronize()
            torch.cuda.set_sync_debug_mode(0 if logs else "error")
            try:
                hooks.batch_start()
                outputs = model(inputs)
                loss = nn.functional.cross_entropy(outputs, targets)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                hooks.batch_end(inputs, targets, outputs, loss)
                if logs:
                    # The debug mode is process-wide: the background thread's read-back of this step's
                    # histograms (where it is meant to synchronise) must be over before the next step.
                    assert hooks.run.drain() == []
            finally:
                torch.cuda.set_sync_debug_mode(0)
        hooks.epoch_end()
    assert hooks.step == 25 and not hooks.faults
