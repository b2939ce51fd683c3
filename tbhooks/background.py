"""One worker thread per run for plugin work the training thread must not wait for (PNG encoding,
device read-backs, ...), run in submission order; the core waits for it only before closing the writer."""

from __future__ import annotations

import queue
import threading
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable

Task = tuple[object, "Callable[..., Any]", tuple[Any, ...], dict[str, Any]]


class Background:
    """The run's background thread, started by the first task ``(owner, fn, args, kwargs)``.  An error in
    ``fn`` is only collected here, against ``owner``; the training thread reports it after :meth:`take_errors`."""

    def __init__(self) -> None:
        self._queue: queue.Queue[Task | None] = queue.Queue(maxsize=64)
        self._errors: list[tuple[object, BaseException]] = []
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def submit(self, owner: object, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        """Queue ``fn(*args, **kwargs)``; blocks only when 64 tasks are already waiting."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._work, name="tbhooks-background", daemon=True)
            self._thread.start()
        self._queue.put((owner, fn, args, kwargs))

    def _work(self) -> None:
        while True:
            task = self._queue.get()
            try:
                if task is None:
                    return
                owner, fn, args, kwargs = task
                try:
                    fn(*args, **kwargs)
                except Exception as exc:
                    with self._lock:
                        self._errors.append((owner, exc))
            finally:
                self._queue.task_done()

    def take_errors(self) -> list[tuple[object, BaseException]]:
        """The ``(owner, error)`` pairs of tasks that raised since the last call."""
        with self._lock:
            errors, self._errors = self._errors, []
        return errors

    def drain(self) -> None:
        """Wait until every submitted task has run."""
        if self._thread is not None and self._thread.is_alive():
            self._queue.join()

    def stop(self) -> None:
        """Finish what is queued and end the thread."""
        if self._thread is not None and self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()
        self._thread = None
