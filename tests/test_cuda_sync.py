"""On CUDA, steps where nothing is logged never synchronise the host with the device.

Skipped without a GPU (CI has none); run them on a GPU machine with `pytest -m cuda`
(`benchmarks/cuda_check.py` does).  The sync debug mode makes any device-to-host
synchronisation raise; it is on around tbhooks' calls on the steps that log nothing.
"""

from __future__ import annotations

import contextlib

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
LOGGING_STEPS = (1, 10, 20)  # step 1: graph and image grid; 10, 20: scalars and histograms


def net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 6, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(6 * 12 * 12, 10)
    ).cuda()


@contextlib.contextmanager
def no_sync(step: int):
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode(0 if step in LOGGING_STEPS else "error")
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode(0)


@pytest.mark.parametrize("mode", ["eager", "compiled", "float16"])
def test_steps_that_log_nothing_do_not_sync(tmp_path, mode):
    model = net()
    call = torch.compile(model) if mode == "compiled" else model
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    scaler = torch.amp.GradScaler("cuda") if mode == "float16" else None
    batches = [(torch.randn(4, 1, 28, 28, device="cuda"), torch.randint(0, 10, (4,), device="cuda")) for _ in range(8)]
    plugins = [Scalars(every_n_steps=10), Histograms(every_n_steps=10, activations=["1"])]
    with tbhooks.attach(call, logdir=tmp_path, optimizer=optimizer, plugins=plugins, autoload=False) as hooks:
        hooks.epoch_start()
        for index in range(25):
            inputs, targets = batches[index % len(batches)]
            step = hooks.step + 1
            with no_sync(step):
                hooks.batch_start()
            optimizer.zero_grad(set_to_none=True)
            with torch.autocast("cuda", dtype=torch.float16, enabled=scaler is not None):
                outputs = call(inputs)
                loss = nn.functional.cross_entropy(outputs, targets)
            if scaler is None:
                loss.backward()
                optimizer.step()
            else:  # the README's lines; GradScaler.step itself reads found_inf back on every step
                scaler.scale(loss).backward()
                with no_sync(step):
                    due = hooks.due()
                if due:
                    scaler.unscale_(optimizer)
                scaler.step(optimizer)
                scaler.update()
            with no_sync(step):
                hooks.batch_end(inputs, targets, outputs, loss)
            if step in LOGGING_STEPS:
                # The debug mode is process-wide: the background thread's read-back of this step's
                # histograms (where it is meant to synchronise) must be over before the next step.
                hooks.drain()
        hooks.epoch_end()
    assert hooks.step == 25 and not hooks.faults
