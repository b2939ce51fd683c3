"""Exceptions and warnings tbhooks raises, in one place so users can filter them."""

from __future__ import annotations


class TbhooksWarning(UserWarning):
    """Base class of every warning tbhooks emits (each is emitted once per run and cause)."""


class PluginFaultWarning(TbhooksWarning):
    """A plugin raised; it was unregistered for the rest of the run and training went on."""


class NonFiniteLossWarning(TbhooksWarning):
    """The logged training or evaluation loss is NaN or infinite."""


class Terminated(BaseException):
    """Raised in the main thread when SIGTERM arrives during a fit.

    It derives from ``BaseException`` for the same reason ``KeyboardInterrupt``
    does: ``except Exception`` in user code must not swallow it, while every
    ``finally`` block (writer flush, module-hook removal) still runs.  Once
    tbhooks has cleaned up, the process is ended by SIGTERM itself, so the
    exit status is the usual one (143).
    """
