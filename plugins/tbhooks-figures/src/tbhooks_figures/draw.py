"""The functions the render worker process calls: numpy in, a matplotlib ``Figure`` out.

No torch, tbhooks or matplotlib at import time: the plugin imports this module to name the functions,
and only the worker, which calls them, imports matplotlib (through :mod:`tbhooks_figures.render`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np
    from matplotlib.figure import Figure


def draw_confusion_matrix(counts: np.ndarray, names: list[str], dpi: int) -> Figure:
    """The confusion-matrix figure (runs in the render worker process)."""
    from tbhooks_figures.render import confusion_matrix_figure

    return confusion_matrix_figure(counts, names, dpi=dpi)


def draw_predictions(images: np.ndarray, titles: list[tuple[str, str]], dpi: int) -> Figure:
    """The predictions-vs-actuals figure (runs in the render worker process)."""
    from tbhooks_figures.render import predictions_figure

    return predictions_figure(images, titles, dpi=dpi)
