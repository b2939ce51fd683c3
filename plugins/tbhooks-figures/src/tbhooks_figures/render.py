"""Figure builders: data in, a ``matplotlib.figure.Figure`` out, run in the render worker process.

Each figure is a bare ``Figure`` (no ``pyplot``), so no global registry keeps it alive after the worker
saves it.  User strings (class names) are drawn with ``parse_math=False``, so a ``$`` shows as is.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from matplotlib.figure import Figure

_NAME_CHARS = 24
"""Class names longer than this are cut (with an ellipsis) on the axes of the confusion matrix."""


def tbhooks_warm_up() -> None:
    """Draw and save a small figure when the render worker starts (it calls this after the import).

    The first figure loads fonts and fills caches; here that overlaps with training.
    """
    import io

    confusion_matrix_figure(np.eye(2, dtype=np.int64), ["0", "1"]).savefig(io.BytesIO(), format="png")


def _short(name: str) -> str:
    return name if len(name) <= _NAME_CHARS else name[: _NAME_CHARS - 1] + "…"


def _as_rgb_images(images: np.ndarray) -> np.ndarray:
    """``[N, C, H, W]`` (C 1 or 3) or ``[N, H, W]`` -> ``[N, H, W, 3]`` floats in [0, 1].

    Each image is stretched to its own min..max, so normalised and raw 0..255 inputs both show full contrast.
    """
    array = np.nan_to_num(np.asarray(images, dtype=np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    if array.ndim == 3:
        array = array[:, None]
    if array.ndim != 4 or array.shape[1] not in (1, 3):
        raise ValueError(f"images expects [N, C, H, W] with C 1 or 3, or [N, H, W]; got shape {list(array.shape)}")
    low = array.min(axis=(1, 2, 3), keepdims=True)
    span = array.max(axis=(1, 2, 3), keepdims=True) - low
    array = (array - low) / np.where(span > 0, span, 1.0)
    array = array.transpose(0, 2, 3, 1)
    if array.shape[3] == 1:
        array = np.repeat(array, 3, axis=3)
    return array


def _fit(image: np.ndarray, size: int) -> np.ndarray:
    """``image`` scaled to fit a ``size`` x ``size`` square by nearest neighbour:
    enlarged by a whole factor (pixels stay sharp) or reduced by a stride."""
    longest = max(image.shape[0], image.shape[1])
    if longest <= size:
        factor = size // longest
        return image.repeat(factor, axis=0).repeat(factor, axis=1)
    stride = math.ceil(longest / size)
    return image[::stride, ::stride]


def predictions_figure(
    images: np.ndarray,
    titles: Sequence[tuple[str, str]],
    *,
    dpi: int = 100,
    panel_inches: float = 2.0,
    columns: int = 4,
) -> Figure:
    """The "predictions vs. actuals" grid: each image under its title.

    :param images: ``[N, C, H, W]`` with C 1 or 3, or ``[N, H, W]`` (numpy or a CPU tensor).
    :param titles: ``(text, colour)`` per image, as :func:`tbhooks_figures.prediction_titles` makes them.
    :param dpi: pixels per inch of the figure.
    :param panel_inches: the side of each image's square panel.
    :param columns: images per row.

    The images are composed into one pixel grid placed with ``Figure.figimage`` (no Axes, no resampling blur).
    """
    rgb = _as_rgb_images(images)
    count = rgb.shape[0]
    if count == 0:
        raise ValueError("images is empty; pass at least one image")
    if len(titles) != count:
        raise ValueError(f"titles has {len(titles)} entries for {count} images")
    panel = max(8, round(panel_inches * dpi))
    fontsize = min(10.0, max(4.0, panel_inches * 4.0))
    title_px = math.ceil(2 * fontsize * 1.3 / 72 * dpi) + 4  # two lines of text and a little air
    gap = max(2, panel // 16)
    cell_w, cell_h = panel + gap, panel + title_px
    cols = max(1, min(columns, count))
    rows = math.ceil(count / cols)
    width, height = cols * cell_w, rows * cell_h

    grid = np.ones((height, width, 3), dtype=np.float32)  # white background
    for index in range(count):
        row, col = divmod(index, cols)
        image = _fit(rgb[index], panel)
        top = row * cell_h + title_px + (panel - image.shape[0]) // 2
        left = col * cell_w + gap // 2 + (panel - image.shape[1]) // 2
        grid[top : top + image.shape[0], left : left + image.shape[1]] = image
    figure = Figure(figsize=(width / dpi, height / dpi), dpi=dpi)
    figure.figimage(grid, xo=0, yo=0, origin="upper")
    for index, (text, colour) in enumerate(titles):
        row, col = divmod(index, cols)
        figure.text(
            (col * cell_w + cell_w / 2) / width,
            1 - (row * cell_h + title_px / 2) / height,
            text,
            color=colour,
            fontsize=fontsize,
            ha="center",
            va="center",
            multialignment="center",
            parse_math=False,
        )
    return figure


def confusion_matrix_figure(
    counts: np.ndarray,
    class_names: Sequence[str],
    *,
    dpi: int = 100,
    figsize: tuple[float, float] | None = None,
) -> Figure:
    """The confusion matrix: true class down, predicted class across, the count in each cell.

    :param counts: ``[C, C]`` integer counts, row = true label, column = predicted class.
    :param class_names: ``C`` names for the axes.
    :param dpi: pixels per inch of the figure.
    :param figsize: ``(width, height)`` in inches; by default about half an inch per class plus the names.

    The title gives the number of samples and the accuracy (the diagonal's share).
    """
    counts = np.asarray(counts)
    if counts.ndim != 2 or counts.shape[0] != counts.shape[1] or counts.shape[0] == 0:
        raise ValueError(f"counts expects a square [C, C] matrix, got shape {list(counts.shape)}")
    classes = counts.shape[0]
    if len(class_names) != classes:
        raise ValueError(f"class_names has {len(class_names)} names for {classes} classes")
    counts = counts.astype(np.int64)
    names = [_short(str(name)) for name in class_names]
    total = int(counts.sum())
    accuracy = float(np.trace(counts)) / total if total else 0.0
    cell = 0.45  # inches per class when the size is ours to choose
    fontsize = min(10.0, max(5.0, cell * 72 * 0.3))
    char = fontsize * 0.6 / 72  # rough width of one character, inches
    longest = max(len(n) for n in names) * char
    left = fontsize * 1.6 / 72 + longest + 0.15  # y label + tick labels
    bottom = fontsize * 1.6 / 72 + longest * 0.75 + 0.2  # x label + labels turned 45 degrees
    top, right = fontsize * 2.2 / 72 + 0.1, 0.2
    if figsize is None:
        side = max(2.4, cell * classes)
        figsize = (left + side + right, bottom + side + top)
    width, height = figsize
    figure = Figure(figsize=figsize, dpi=dpi)
    # Margins as fractions; capped so that a tiny figure still has room for the matrix.
    figure.subplots_adjust(
        left=min(left / width, 0.45),
        right=1 - min(right / width, 0.05),
        bottom=min(bottom / height, 0.45),
        top=1 - min(top / height, 0.2),
    )
    axes = figure.add_subplot()
    peak = int(counts.max())
    axes.imshow(counts, cmap="Blues", vmin=0, vmax=max(peak, 1), interpolation="nearest")
    for row in range(classes):
        for col in range(classes):
            value = int(counts[row, col])
            colour = "white" if value > peak / 2 else "black"  # readable on dark and light cells
            axes.text(col, row, str(value), ha="center", va="center", fontsize=fontsize, color=colour)
    axes.set_xticks(
        range(classes), names, rotation=45, ha="right", rotation_mode="anchor", fontsize=fontsize, parse_math=False
    )
    axes.set_yticks(range(classes), names, fontsize=fontsize, parse_math=False)
    axes.set_xlabel("predicted", fontsize=fontsize)
    axes.set_ylabel("true", fontsize=fontsize)
    axes.set_title(f"{total} samples, accuracy {accuracy:.1%}", fontsize=fontsize)
    return figure
