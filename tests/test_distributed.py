"""Under torchrun (2 processes, gloo on the CPU) only rank 0 writes, and evaluation covers the whole set."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tbhooks.testing import read_events

CHILD = Path(__file__).with_name("_ddp_child.py")


@pytest.mark.slow
def test_torchrun_two_processes_one_event_stream(tmp_path):
    logdir = tmp_path / "run"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc-per-node",
            "2",
            str(CHILD),
            str(logdir),
        ],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    files = sorted(p.name for p in logdir.iterdir() if p.name.startswith("events.out.tfevents"))
    assert len(files) == 1, files

    # Both ranks computed the same metrics from the gathered evaluation set.
    reports = [(tmp_path / f"report-{rank}.txt").read_text() for rank in (0, 1)]
    assert reports[0] == reports[1] and reports[0].startswith("accuracy ")

    events = read_events(logdir)
    assert events.values("probe/eval_samples") == [37.0, 37.0], "every rank's share, none padded"
    assert events.values("probe/rank") == [0.0, 0.0], "only rank 0 wrote"
    torch.manual_seed(0)
    labels = torch.randn(64, 6)[:37, :3].argmax(1)  # the child's evaluation labels
    assert events.values("probe/eval_label_sum") == [float(labels.sum())] * 2, "each sample gathered exactly once"
    assert events.steps("train/epoch_loss") == [4, 8], "64 samples / 2 ranks / batch 8 = 4 steps an epoch"
    # PR curves: at the lowest threshold TP + FP + TN + FN counts every evaluation sample once.
    for tag in ("pr_curves/a", "pr_curves/b", "pr_curves/c"):
        assert tag in events.pr_curves, sorted(events.pr_curves)
        for _, table in events.pr_curves[tag]:
            assert table[:4, 0].sum() == 37


@pytest.mark.slow
def test_torchrun_demo_leaves_one_run(tmp_path):
    world_size, limit, batch_size = 2, 160, 32
    done = subprocess.run(
        [
            *(sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(world_size)),
            *(str(Path(sys.executable).with_name("tbhooks")), "demo", "--logdir", str(tmp_path)),
            *("--epochs", "1", "--limit", str(limit), "--batch-size", str(batch_size), "--device", "cpu"),
            *("--disable", "figures", "embeddings", "graph"),
        ],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    runs = list(tmp_path.iterdir())
    assert len(runs) == 1, runs
    assert len(list(runs[0].glob("events.out.tfevents.*"))) == 1
    assert done.stdout.count("final test accuracy") == 1, "rank 0 alone reports"
    events = read_events(runs[0])
    # The Trainer's DistributedSampler gives each rank half the training images; the demo sizes
    # the scalars interval from the whole split (a fifth of its epoch, at least 1).
    steps = math.ceil(math.ceil(limit / world_size) / batch_size)
    every = max(1, math.ceil(limit / batch_size) // 5)
    assert events.steps("train/loss") == list(range(every, steps + 1, every))
    assert events.steps("train/epoch_loss") == events.steps("eval/accuracy") == [steps]
    assert all(math.isfinite(value) and value > 0 for value in events.values("train/loss"))
