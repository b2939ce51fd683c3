"""How a process's end reaches a run: SIGTERM, and an exit without ``close()``.

SIGTERM during a fit is raised as :class:`tbhooks.Terminated` in the main thread, so every ``finally``
runs; re-sending it with the default action then exits with the usual status (143).  Runs still open
at interpreter exit (``sys.exit`` inside the loop) are closed then.
"""

from __future__ import annotations

import atexit
import os
import signal
import threading
import weakref
from typing import TYPE_CHECKING, Any

from tbhooks.errors import Terminated

if TYPE_CHECKING:
    from collections.abc import Callable
    from types import FrameType

    from tbhooks.hooks import Hooks

close_at_exit: weakref.WeakSet[Hooks] = weakref.WeakSet()
"""The runs still open: each is closed when the interpreter exits."""


@atexit.register
def _close_open_runs() -> None:
    for hooks in list(close_at_exit):
        hooks.close()


class SigtermHandler:
    """Installs the handler for the length of a fit (main thread only) and restores the previous one."""

    def __init__(self, where: Callable[[], int]) -> None:
        self._where = where  # the current step, for the message
        self._previous: Any = None

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return

        def on_sigterm(signum: int, frame: FrameType | None) -> None:
            raise Terminated(f"SIGTERM received at step {self._where()}")

        self._previous = signal.signal(signal.SIGTERM, on_sigterm)

    def restore(self) -> None:
        if self._previous is not None and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None


def resend_sigterm() -> None:
    """End the process by SIGTERM with the default action, so its exit status is the usual one."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGTERM)
