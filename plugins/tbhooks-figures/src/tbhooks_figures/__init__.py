"""tbhooks-figures: a predictions-vs-actuals figure and a confusion matrix at every evaluation.

Installed, it is found through the ``tbhooks`` entry point ``figures`` (which
calls :func:`plugin`); pass ``plugins=[Figures(num_images=16)]`` to change
its options, or ``disable=["figures"]`` to leave it out.  The figure builders
(matplotlib, imported only when a figure is drawn) are in
:mod:`tbhooks_figures.render`.
"""

from __future__ import annotations

from tbhooks_figures.plugin import (
    CONFUSION_TAG,
    PREDICTIONS_TAG,
    Figures,
    confusion_counts,
    image_batch,
    plugin,
    prediction_titles,
)

__version__ = "0.1.0"

__all__ = [
    "CONFUSION_TAG",
    "PREDICTIONS_TAG",
    "Figures",
    "__version__",
    "confusion_counts",
    "image_batch",
    "plugin",
    "prediction_titles",
]
