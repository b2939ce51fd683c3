"""Drawing functions for ``test_render_worker.py``: they run in the render worker process, which
imports them by module and name, so they live in an importable module (not in the test file)."""

from __future__ import annotations

import os
import time

import numpy as np


def gradient(height: int, width: int, channels: int, offset: int) -> np.ndarray:
    """``pixel[y, x, c] = (offset + 7y + 3x + 50c) % 256``, uint8 ``[H, W, C]`` (or ``[H, W]`` for 0 channels)."""
    y, x, c = np.meshgrid(np.arange(height), np.arange(width), np.arange(max(channels, 1)), indexing="ij")
    pixels = ((offset + 7 * y + 3 * x + 50 * c) % 256).astype(np.uint8)
    return pixels[:, :, 0] if channels == 0 else pixels


def pid_image(height: int = 2, width: int = 3, pause: float = 0.0) -> np.ndarray:
    """The first row's pixels hold the drawing process's id, the others its parent's: R, G, B = bytes 2, 1, 0.

    (The worker draws, or its second drawing process, whose parent is the worker.)  After ``pause`` seconds.
    """
    time.sleep(pause)
    pixels = np.zeros((height, width, 3), dtype=np.uint8)
    for rows, pid in ((slice(0, 1), os.getpid()), (slice(1, None), os.getppid())):
        pixels[rows] = [(pid >> 16) & 255, (pid >> 8) & 255, pid & 255]
    return pixels


def age_image() -> np.ndarray:
    """A 3x1 image: how long ago, in ms, the drawing process was created (Linux: ``/proc``), its id and its
    parent's, each as R, G, B = bytes 2, 1, 0.  A process forked for the request is a few ms old."""
    with open("/proc/self/stat") as stat, open("/proc/uptime") as uptime:
        started = int(stat.read().rsplit(")", 1)[1].split()[19])  # field 22: the start, in clock ticks
        now = float(uptime.read().split()[0])
    age = max(0, round((now - started / os.sysconf("SC_CLK_TCK")) * 1000))
    values = (age, os.getpid(), os.getppid())
    return np.array([[[(v >> 16) & 255, (v >> 8) & 255, v & 255]] for v in values], dtype=np.uint8)


def flat(value: int, pause: float = 0.0) -> np.ndarray:
    """A 2x2 RGB image of one grey ``value``, after ``pause`` seconds."""
    time.sleep(pause)
    return np.full((2, 2, 3), value, dtype=np.uint8)


def noisy(value: int) -> np.ndarray:
    """Prints to stdout (the worker's protocol pipe, were it not redirected) before drawing."""
    print("noise on stdout from a drawing function", flush=True)
    return flat(value)


def count(path: str, pause: float = 0.0) -> np.ndarray:
    """Appends a line with the drawing process's id and its parent's to ``path``, after ``pause`` seconds."""
    time.sleep(pause)
    with open(path, "a") as file:
        file.write(f"{os.getpid()} {os.getppid()}\n")
    return flat(1)


def mark(path: str) -> np.ndarray:
    """Writes the drawing process's id and its parent's to ``path.<pid>``; draws a flat image."""
    with open(f"{path}.{os.getpid()}", "w") as file:
        file.write(f"{os.getpid()} {os.getppid()}")
    return flat(1)


def exit_process(status: int) -> np.ndarray:
    """Ends the drawing process at once (no answer, no cleanup)."""
    os._exit(status)


def fail(message: str) -> np.ndarray:
    raise OSError(message)


def floats() -> np.ndarray:
    """Returns floats, not the uint8 pixels the worker expects."""
    return np.zeros((2, 2, 3), dtype=np.float32)


def torch_loaded() -> np.ndarray:
    """White when the drawing process has imported torch, black when not."""
    import sys

    return flat(255 if "torch" in sys.modules else 0)


def _child_run(logdir: str, pause: float) -> None:
    """A run that asks for two images (the first takes ``pause`` seconds), reports its worker's pid,
    then 'trains' until Ctrl-C."""
    import sys

    import torch
    from _render_helpers import flat  # by module name: the worker cannot import this script's __main__

    import tbhooks
    from tbhooks.manager import BUILTIN_PLUGINS

    with tbhooks.attach(torch.nn.Linear(2, 2), logdir=logdir, disable=BUILTIN_PLUGINS, autoload=False) as hooks:
        hooks.run.render_image("slow", 1, flat, 11, pause=pause)
        hooks.run.render_image("slow", 2, flat, 22)
        renderer = hooks.run._render
        renderer._worker.started.wait(60)
        print(renderer.pid, flush=True)
        sys.stdin.readline()  # blocks until the test's signal (or the end of stdin)
        time.sleep(60)


if __name__ == "__main__":
    import signal
    import sys

    # Ctrl-C as in a terminal, whatever the parent left: a shell's background job starts its children
    # with SIGINT ignored, and Python then installs no KeyboardInterrupt handler (the test would hang).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    _child_run(sys.argv[1], float(sys.argv[2]))
