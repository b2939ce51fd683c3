"""The plugins that ship with tbhooks, registered by default (see ``tbhooks.manager.BUILTIN_PLUGINS``).

Each lives in its own module and is imported only when a run registers it.
Pass an instance with options to replace the default one of the same name,
for example ``plugins=[Histograms(every_n_steps=100)]``.
"""

from __future__ import annotations
