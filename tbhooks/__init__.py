"""tbhooks: pluggable TensorBoard logging for PyTorch.

A plugin needs one import, ``from tbhooks import hookimpl``; a training loop
needs :func:`attach` (hand-written loops) or :class:`Trainer`.
"""

from __future__ import annotations

from tbhooks.capture import Capture
from tbhooks.errors import NonFiniteLossWarning, PluginFaultWarning, TbhooksWarning, Terminated
from tbhooks.hooks import Hooks, attach
from tbhooks.markers import hookimpl, hookspec
from tbhooks.run import Run
from tbhooks.trainer import Trainer

__version__ = "0.1.0"

__all__ = [
    "Capture",
    "Hooks",
    "NonFiniteLossWarning",
    "PluginFaultWarning",
    "Run",
    "TbhooksWarning",
    "Terminated",
    "Trainer",
    "__version__",
    "attach",
    "hookimpl",
    "hookspec",
]
