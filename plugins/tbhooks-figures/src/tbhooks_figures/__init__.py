"""tbhooks-figures: a predictions-vs-actuals figure and a confusion matrix at every evaluation.

Installed, it is found through the ``tbhooks`` entry point ``figures``
(:func:`tbhooks_figures.plugin.plugin`); pass
``plugins=[tbhooks_figures.plugin.Figures(num_images=16)]`` to change its
options, or ``disable=["figures"]`` to leave it out.

This module imports nothing on purpose: the render worker process imports
the package to reach :mod:`tbhooks_figures.draw`, and must not pay for torch.
The plugin is in :mod:`tbhooks_figures.plugin`, the figure builders
(matplotlib) in :mod:`tbhooks_figures.render`.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
