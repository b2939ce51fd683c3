"""The functions the render worker process calls: numpy in, RGB pixels out.

Kept in a module of their own, importing neither torch nor tbhooks, so the
worker (which imports this module to unpickle them) starts in about a second;
matplotlib is imported there, never in the training process.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np


def draw_confusion_matrix(counts: np.ndarray, names: list[str], dpi: int) -> np.ndarray:
    """The confusion-matrix figure's RGB pixels (runs in the render worker process)."""
    from tbhooks_figures.render import render_confusion_matrix

    return render_confusion_matrix(counts, names, dpi=dpi)


def draw_predictions(images: np.ndarray, titles: list[tuple[str, str]], dpi: int) -> np.ndarray:
    """The predictions-vs-actuals figure's RGB pixels (runs in the render worker process)."""
    from tbhooks_figures.render import render_predictions

    return render_predictions(images, titles, dpi=dpi)
