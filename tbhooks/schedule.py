"""Which plugins ``on_batch_end`` is raised for at a step, from their ``batch_end_due(step)`` methods.

A plugin without one is due on every step (the contract is in :mod:`tbhooks.hookspecs`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable

    import pluggy

HOOK = "on_batch_end"


class Schedule:
    """The ``on_batch_end`` schedules of one run's plugins."""

    def __init__(self, pm: pluggy.PluginManager) -> None:
        self._pm = pm
        self._checks: list[tuple[object, Callable[[int], bool]]] = []
        self._count = 0
        self._callers: dict[tuple[int, ...], Any] = {}
        self._asked: tuple[int, list[object]] = (-1, [])
        self.faults = 0
        """How many plugin faults the schedule has seen (a faulty plugin is unregistered: look again)."""
        self.refresh()

    def refresh(self, faults: int | None = None) -> None:
        """Read the schedules of the plugins now registered (after set-up, and after a plugin was dropped)."""
        impls = self._pm.hook.on_batch_end.get_hookimpls()
        self._checks = []
        for impl in impls:
            due = getattr(impl.plugin, "batch_end_due", None)
            if callable(due):
                self._checks.append((impl.plugin, due))
        self._count = len(impls)
        self._callers.clear()
        self._asked = (-1, [])
        if faults is not None:
            self.faults = faults

    def _skipped(self, step: int) -> list[object]:
        """The plugins not due at ``step``, asked once per step (a host may call :meth:`due` first)."""
        if self._asked[0] != step:
            self._asked = (step, [plugin for plugin, due in self._checks if not due(step)])
        return self._asked[1]

    def due(self, step: int) -> bool:
        """Whether some plugin is due at ``step``."""
        return len(self._skipped(step)) < self._count

    def caller(self, step: int) -> Any:
        """The hook caller that raises ``on_batch_end`` for the plugins due at ``step``, or ``None``."""
        skipped = self._skipped(step)
        if len(skipped) == self._count:
            return None
        if not skipped:
            return self._pm.hook.on_batch_end
        key = tuple(map(id, skipped))
        caller = self._callers.get(key)
        if caller is None:
            caller = self._callers[key] = self._pm.subset_hook_caller(HOOK, skipped)
        return caller
