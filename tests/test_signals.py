"""Nothing logged is lost when a real training process is interrupted, terminated or killed."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tbhooks.testing import read_events

CHILD = Path(__file__).with_name("_train_child.py")


def start(logdir: Path, flush_secs: float) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(CHILD), str(logdir), str(flush_secs)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for_step(proc: subprocess.Popen[str], step: int, timeout: float = 60.0) -> int:
    """Read the child's announcements until ``step``; return the last step announced."""
    deadline = time.monotonic() + timeout
    last = 0
    while last < step:
        assert time.monotonic() < deadline, "the child did not reach the step in time"
        line = proc.stdout.readline()
        assert line, f"the child ended early: {proc.stderr.read()}"
        if line.startswith("step "):
            last = int(line.split()[1])
    return last


@pytest.mark.slow
@pytest.mark.parametrize(
    ("sig", "status", "message"),
    [(signal.SIGINT, -signal.SIGINT, "KeyboardInterrupt"), (signal.SIGTERM, -signal.SIGTERM, "")],
)
def test_signal_flushes_everything_and_keeps_the_usual_exit_status(tmp_path, sig, status, message):
    # flush_secs is long on purpose: only the shutdown path can have put these events on disk.
    proc = start(tmp_path, flush_secs=600)
    announced = wait_for_step(proc, 15)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=60)
    announced = max([announced] + [int(line.split()[1]) for line in out.splitlines() if line.startswith("step ")])
    assert proc.returncode == status, err
    assert message in err
    steps = read_events(tmp_path).steps("train/loss")
    assert steps[:announced] == list(range(1, announced + 1))


@pytest.mark.slow
def test_sigkill_loses_nothing_older_than_the_flush_interval(tmp_path):
    flush_secs = 1.0
    proc = start(tmp_path, flush_secs=flush_secs)
    announced = wait_for_step(proc, 10)
    time.sleep(flush_secs * 2.5)  # everything announced so far is older than the flush interval
    proc.kill()
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    steps = read_events(tmp_path).steps("train/loss")
    assert steps[:announced] == list(range(1, announced + 1))
