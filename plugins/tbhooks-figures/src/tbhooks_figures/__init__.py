"""tbhooks-figures: a predictions-vs-actuals figure and a confusion matrix at every evaluation.

Found through the ``tbhooks`` entry point ``figures``; the plugin is :mod:`tbhooks_figures.plugin`.
This module imports nothing on purpose: the render worker imports the package and must not pay for torch.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
