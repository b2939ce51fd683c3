"""Run in the render worker process by ``test_figures_plugin.py``: importable by module and name."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any


def record_pid(path: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
    """Write the id of the process that draws to ``path``, then draw with ``fn``."""
    Path(path).write_text(str(os.getpid()))
    return fn(*args, **kwargs)
