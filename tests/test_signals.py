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


def start(logdir: Path, flush_secs: float, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(CHILD), str(logdir), str(flush_secs), *extra],
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


def usual_exit_status(tmp_path: Path, sig: signal.Signals) -> int:
    """The status the same loop written by hand, without tbhooks, ends with on ``sig`` here.

    Python exits a script that a KeyboardInterrupt ended by killing itself with SIGINT
    (status -2), and one that SIGTERM reaches dies of it (-15).  On a GPU machine (gVisor,
    Python 3.12, torch 2.11) this test once saw the tbhooks child exit with 1 on SIGINT; a
    rerun passed, and a plain script there exits with -2, so the cause is not known.  The
    reference is measured there and then: what is asserted is that tbhooks changes nothing.
    """
    proc = start(tmp_path / "bare", 600, "--bare")
    wait_for_step(proc, 5)
    proc.send_signal(sig)
    proc.communicate(timeout=60)
    return proc.returncode


@pytest.mark.slow
@pytest.mark.parametrize(("sig", "message"), [(signal.SIGINT, "KeyboardInterrupt"), (signal.SIGTERM, "")])
def test_signal_flushes_everything_and_keeps_the_usual_exit_status(tmp_path, sig, message):
    usual = usual_exit_status(tmp_path, sig)
    # flush_secs is long on purpose: only the shutdown path can have put these events on disk.
    proc = start(tmp_path / "run", flush_secs=600)
    announced = wait_for_step(proc, 15)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=60)
    announced = max([announced] + [int(line.split()[1]) for line in out.splitlines() if line.startswith("step ")])
    assert proc.returncode == usual, err
    assert message in err
    steps = read_events(tmp_path / "run").steps("train/loss")
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
