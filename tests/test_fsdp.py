"""FSDP2 under torchrun (2 CPU ranks, gloo): whole-parameter histograms from shards, one run, no hang."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from _fsdp_child import check  # the comparison benchmarks/cuda_check.py runs too
from torch import nn

import tbhooks

CHILD = Path(__file__).with_name("_fsdp_child.py")


@pytest.mark.slow
def test_fsdp2_histograms_equal_the_whole_parameters_and_one_run_is_written(tmp_path):
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc-per-node",
            "2",
            str(CHILD),
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    check(tmp_path, world=2)


def test_fsdp_outside_a_distributed_run_is_a_clear_error(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    model = nn.Linear(4, 2)
    with pytest.raises(ValueError, match=r"strategy='fsdp' expects a distributed run"):
        tbhooks.Trainer(model, torch.optim.SGD(model.parameters(), lr=0.1), nn.functional.mse_loss, strategy="fsdp")
    with pytest.raises(ValueError, match=r"strategy expects None or 'fsdp', got 'deepspeed'"):
        tbhooks.Trainer(
            model, torch.optim.SGD(model.parameters(), lr=0.1), nn.functional.mse_loss, strategy="deepspeed"
        )
