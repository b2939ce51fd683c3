"""Drawing functions for ``test_render.py``.

The render worker imports them by module and name, so they live in an
importable module (``tests/`` is on ``sys.path``, and the worker gets the
training process's ``sys.path``).  This module imports neither torch nor
tbhooks at import time: the worker must not.  Run as a script it is a
training process (:func:`_child_run`), for the signal tests.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

WARM_UP_ENV = "TBHOOKS_TEST_WARM_UP"
"""Where :func:`tbhooks_warm_up` reports the process it ran in (a path; unset: it does nothing)."""


def solid(colour: str, width: int = 30, height: int = 20, dpi: int = 10) -> Figure:
    """A ``width`` x ``height`` pixel figure of one colour (``"#rrggbb"``)."""
    return Figure(figsize=(width / dpi, height / dpi), dpi=dpi, facecolor=colour)


def pixels(array: np.ndarray, dpi: int = 10) -> Figure:
    """A figure exactly the size of ``array`` (``uint8 [H, W, 3]``) showing its pixels, top row first."""
    height, width = array.shape[:2]
    figure = Figure(figsize=(width / dpi, height / dpi), dpi=dpi, facecolor="white")
    figure.figimage(array, xo=0, yo=0, origin="upper")
    return figure


def _write_json(path: str, data: dict[str, object]) -> None:
    """Write ``data`` to ``path`` whole (a reader polling for ``path`` never sees half of it)."""
    partial = Path(f"{path}.partial")
    partial.write_text(json.dumps(data))
    partial.replace(path)


def process_facts() -> dict[str, object]:
    """The process that calls it: its id, its parent's, its session, and which heavy packages it imported."""
    return {
        "pid": os.getpid(),
        "ppid": os.getppid(),
        "sid": os.getsid(0),
        "torch": "torch" in sys.modules,
        "tbhooks": "tbhooks" in sys.modules,
    }


def report(path: str, colour: str = "#ffffff") -> Figure:
    """Write :func:`process_facts` to ``path``, then draw a solid figure."""
    _write_json(path, process_facts())
    return solid(colour)


def slow(seconds: float, colour: str) -> Figure:
    """A solid figure that takes ``seconds`` to draw."""
    time.sleep(seconds)
    return solid(colour)


def gated(gate: str, started: str | None = None, colour: str = "#00ff00", limit: float = 60.0) -> Figure:
    """Write :func:`process_facts` to ``started``, then wait (``limit`` seconds at most) until ``gate`` exists."""
    if started is not None:
        _write_json(started, process_facts())
    deadline = time.monotonic() + limit
    while not os.path.exists(gate) and time.monotonic() < deadline:
        time.sleep(0.01)
    return solid(colour)


def fail(message: str) -> Figure:
    raise OSError(message)


def not_a_figure() -> str:
    return "a string, not a Figure"


def tbhooks_warm_up() -> None:
    """Called by the worker when it preloads this module: reports the process to ``$TBHOOKS_TEST_WARM_UP``."""
    path = os.environ.get(WARM_UP_ENV)
    if path:
        _write_json(path, process_facts())


def wait_for_json(path: str | os.PathLike[str], limit: float = 60.0) -> dict[str, object]:
    """The JSON object at ``path`` once it exists (``TimeoutError`` after ``limit`` seconds)."""
    deadline = time.monotonic() + limit
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} did not appear within {limit} s")
        time.sleep(0.01)
    return json.loads(Path(path).read_text())


def _child_run(workdir: str) -> None:
    """A training process: one run whose drawing waits for ``workdir/gate`` and, for ``kill``, a second
    run whose worker is idle.  Prints the workers' pids (one line), then 'trains' until a signal."""
    import torch
    from _render_helpers import gated  # by module name: the worker cannot import this script's __main__

    import tbhooks
    from tbhooks.manager import BUILTIN_PLUGINS

    class Announce:
        """Prints a line when the run ends by an exception (before the run's close waits for the drawing)."""

        name = "announce"

        @tbhooks.hookimpl
        def on_exception(self, exception: BaseException) -> None:
            print("interrupted", type(exception).__name__, flush=True)

    work = Path(workdir)
    announce = Announce()
    options = {"disable": list(BUILTIN_PLUGINS), "autoload": False}
    with (
        tbhooks.attach(torch.nn.Linear(2, 2), logdir=work / "drawing", plugins=[announce], **options) as drawing,
        tbhooks.attach(torch.nn.Linear(2, 2), logdir=work / "idle", **options) as idle,
    ):
        drawing.run.render_image(announce, "gated", 1, gated, str(work / "gate"), str(work / "started"))
        os.environ[WARM_UP_ENV] = str(work / "warmed")
        idle.run.start_render_worker("_render_helpers")
        pids = [wait_for_json(work / name)["pid"] for name in ("started", "warmed")]
        print(*pids, flush=True)
        sys.stdin.readline()  # blocks until the test's signal (or the end of stdin)
        time.sleep(60)


if __name__ == "__main__":
    import signal

    # Ctrl-C as in a terminal, whatever the parent left: a shell's background job starts its children
    # with SIGINT ignored, and Python then installs no KeyboardInterrupt handler (the test would hang).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    _child_run(sys.argv[1])
