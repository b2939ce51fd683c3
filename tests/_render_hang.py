"""A module the render worker can preload whose warm-up never ends (ten minutes): the worker never gets
to read its requests, not even the one asking it to exit (``test_render_worker.py``)."""

from __future__ import annotations

import time


def tbhooks_warm_up() -> None:
    time.sleep(600)
