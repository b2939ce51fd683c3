"""FSDP2 under torchrun (2 CPU ranks, gloo): whole-parameter histograms from shards, one run, no hang."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import tbhooks
from tbhooks.testing import read_events

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
    for run in ("trainer", "attach"):
        logdir = tmp_path / run
        assert len(list(logdir.glob("events.out.tfevents.*"))) == 1, run
        truth = json.loads((tmp_path / f"{run}.json").read_text())
        events = read_events(logdir)
        assert set(events.histograms) == set(truth) and len(truth) == 8, (run, sorted(events.histograms))
        for tag, by_step in truth.items():
            logged = {event.step: event.histogram_value for event in events.histograms[tag]}
            assert sorted(logged) == sorted(int(step) for step in by_step) == [2, 4], (run, tag)
            for step, (num, low, high, total, square) in by_step.items():
                value = logged[int(step)]
                assert (value.num, sum(value.bucket)) == (num, num), (run, tag)
                assert (value.min, value.max) == pytest.approx((low, high), rel=1e-6), (run, tag)
                assert value.sum == pytest.approx(total, rel=1e-5, abs=1e-6), (run, tag)
                assert value.sum_squares == pytest.approx(square, rel=1e-5), (run, tag)
        assert events.steps("train/epoch_loss") == [4]  # 32 samples, 16 a rank, batches of 4
        # A sharded model is not traced on one rank (it would wait for the other): its text summary instead.
        assert not events.graph and "graph/summary/text_summary" in events.texts
    events = read_events(tmp_path / "trainer")
    # 12 evaluation samples, 6 on each rank: every PR curve counts each of them once.
    for tag in ("pr_curves/a", "pr_curves/b", "pr_curves/c"):
        [(_, table)] = events.pr_curves[tag]
        assert table[:4, 0].sum() == 12
    assert events.values("eval/accuracy")


def test_fsdp_outside_a_distributed_run_is_a_clear_error(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    model = nn.Linear(4, 2)
    with pytest.raises(ValueError, match=r"strategy='fsdp' expects a distributed run"):
        tbhooks.Trainer(model, torch.optim.SGD(model.parameters(), lr=0.1), nn.functional.mse_loss, strategy="fsdp")
    with pytest.raises(ValueError, match=r"strategy expects None or 'fsdp', got 'deepspeed'"):
        tbhooks.Trainer(
            model, torch.optim.SGD(model.parameters(), lr=0.1), nn.functional.mse_loss, strategy="deepspeed"
        )
