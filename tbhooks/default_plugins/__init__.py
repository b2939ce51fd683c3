"""The plugins that ship with tbhooks, registered by default (``tbhooks.manager.BUILTIN_PLUGINS``).

Each module is imported only when a run registers its plugin.  Pass an instance with options to replace the
default one of the same name, e.g. ``plugins=[Histograms(every_n_steps=100)]``.
"""

from __future__ import annotations
