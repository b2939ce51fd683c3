"""Run in the render worker process by ``test_figures_plugin.py``: importable by module and name."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any


def record_process(path: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
    """Write facts about the process that draws to ``path`` (JSON), then draw with ``fn``.

    Recorded before ``fn`` runs: whether ``tbhooks_figures.render`` was
    already imported shows that the worker preloaded it.
    """
    facts = {
        "pid": os.getpid(),
        "ppid": os.getppid(),
        "torch": "torch" in sys.modules,
        "preloaded": "tbhooks_figures.render" in sys.modules,
    }
    Path(path).write_text(json.dumps(facts))
    return fn(*args, **kwargs)
