"""Run in the render worker process by ``test_figures_plugin.py``: importable by module and name."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any


def record_pid(path: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
    """Write the ids of the process that draws and of its parent to ``path``, then draw with ``fn``.

    (The render worker draws, or its fork, whose parent is the worker.)"""
    Path(path).write_text(f"{os.getpid()} {os.getppid()}")
    return fn(*args, **kwargs)
