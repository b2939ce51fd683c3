"""The figures plugin's parts: the counts, the titles and colours, the figures saved as PNG, and memory."""

from __future__ import annotations

import gc
import io
import os
import subprocess
import sys
import weakref

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure
from PIL import Image
from tbhooks_figures.plugin import confusion_counts, image_batch, prediction_titles
from tbhooks_figures.render import confusion_matrix_figure, predictions_figure

from tbhooks.render import render_png

RED, GREEN, BLUE = 0, 1, 2  # channels


def png(fn, *args, **kwargs) -> np.ndarray:
    """The RGB pixels of the PNG that the render worker makes of ``fn(*args, **kwargs)``."""
    data, width, height = render_png(fn, args, kwargs)
    picture = Image.open(io.BytesIO(data))
    assert picture.format == "PNG" and picture.size == (width, height)
    return np.asarray(picture.convert("RGB"))


def near(pixels: np.ndarray, colour: tuple[int, int, int], tolerance: int = 0) -> np.ndarray:
    """Mask of the pixels within ``tolerance`` of ``colour`` on every channel."""
    return (np.abs(pixels.astype(np.int16) - np.array(colour, dtype=np.int16)) <= tolerance).all(axis=-1)


def tinted(pixels: np.ndarray, channel: int, margin: int = 50) -> np.ndarray:
    """Mask of the pixels whose ``channel`` exceeds both others by ``margin``: text of that colour,
    anti-aliased onto white included (matplotlib's "green" is (0, 128, 0), "red" (255, 0, 0))."""
    values = pixels.astype(np.int16)
    others = [values[..., c] for c in range(3) if c != channel]
    return (values[..., channel] - others[0] >= margin) & (values[..., channel] - others[1] >= margin)


# ---------------------------------------------------------------------------
# confusion counts
# ---------------------------------------------------------------------------


def test_confusion_counts_match_counts_made_by_hand():
    generator = torch.Generator().manual_seed(1)
    labels = torch.randint(0, 4, (300,), generator=generator)
    predictions = torch.randint(0, 4, (300,), generator=generator)
    expected = np.zeros((4, 4), dtype=np.int64)
    for truth, guess in zip(labels.tolist(), predictions.tolist(), strict=True):
        expected[truth, guess] += 1

    counts = confusion_counts(predictions, labels, 4)
    assert counts.dtype == torch.int64 and counts.device == labels.device
    np.testing.assert_array_equal(counts.numpy(), expected)


def test_confusion_counts_keep_classes_nobody_predicted():
    counts = confusion_counts(torch.tensor([0, 0, 0]), torch.tensor([0, 2, 2]), 3)
    assert counts.tolist() == [[1, 0, 0], [0, 0, 0], [2, 0, 0]]


def test_confusion_counts_refuse_mismatched_shapes():
    with pytest.raises(ValueError, match="predictions and labels"):
        confusion_counts(torch.zeros(3, dtype=torch.long), torch.zeros(4, dtype=torch.long), 2)


# ---------------------------------------------------------------------------
# titles and colours
# ---------------------------------------------------------------------------


def test_titles_give_prediction_probability_and_label_in_green_or_red():
    probabilities = torch.tensor([[0.1, 0.7, 0.2], [0.6, 0.3, 0.1], [0.0005, 0.999, 0.0005]])
    labels = torch.tensor([1, 2, 1])
    assert prediction_titles(probabilities, labels, ["cat", "dog", "bird"]) == [
        ("dog, 70.0%\n(label: dog)", "green"),
        ("cat, 60.0%\n(label: bird)", "red"),
        ("dog, 99.9%\n(label: dog)", "green"),
    ]


def test_titles_refuse_mismatched_shapes():
    with pytest.raises(ValueError, match="probabilities"):
        prediction_titles(torch.ones(2, 3) / 3, torch.tensor([0, 1, 2]), ["a", "b", "c"])


@pytest.mark.parametrize(
    ("shape", "dtype", "expected"),
    [
        ((4, 1, 8, 8), torch.float32, True),
        ((4, 3, 8, 8), torch.uint8, True),
        ((4, 8, 8), torch.float32, True),
        ((4, 2, 8, 8), torch.float32, False),  # two channels: not an image
        ((4, 8), torch.float32, False),  # feature vectors
        ((4, 1, 8, 8), torch.bool, False),
        ((4, 1, 0, 8), torch.float32, False),  # empty images
    ],
)
def test_image_batch_accepts_only_image_shapes(shape, dtype, expected):
    assert image_batch(torch.zeros(shape, dtype=dtype)) is expected


def test_image_batch_refuses_non_tensors():
    assert image_batch({"pixels": torch.zeros(4, 1, 8, 8)}) is False
    assert image_batch(np.zeros((4, 1, 8, 8))) is False


# ---------------------------------------------------------------------------
# the predictions figure
# ---------------------------------------------------------------------------


def test_predictions_figure_colours_each_title_green_or_red():
    images = np.zeros((2, 1, 8, 8), dtype=np.float32)  # black images: no green or red comes from them
    titles = prediction_titles(torch.tensor([[0.9, 0.1], [0.8, 0.2]]), torch.tensor([0, 1]), ["yes", "no"])
    assert [colour for _, colour in titles] == ["green", "red"]

    pixels = png(predictions_figure, images, titles, dpi=80, panel_inches=2.0, columns=2)
    half = pixels.shape[1] // 2
    left, right = pixels[:, :half], pixels[:, half:]
    assert tinted(left, GREEN).sum() > 100 and tinted(left, RED).sum() == 0  # the right prediction
    assert tinted(right, RED).sum() > 100 and tinted(right, GREEN).sum() == 0  # the wrong one
    # Both titles above their images: the coloured text lies above the first black row.
    black_rows = np.flatnonzero((pixels == 0).all(axis=2).any(axis=1))
    coloured_rows = np.flatnonzero((tinted(pixels, GREEN) | tinted(pixels, RED)).any(axis=1))
    assert coloured_rows.max() < black_rows.min()


def test_predictions_figure_draws_rgb_images_in_order_with_their_colours():
    rgb = np.zeros((3, 3, 5, 5), dtype=np.float32)
    for index in range(3):
        rgb[index, index] = 1.0  # pure red, green, blue
    pixels = png(predictions_figure, rgb, [("a", "black")] * 3, dpi=40, panel_inches=1.0, columns=3)
    centres = []
    for colour in [(255, 0, 0), (0, 255, 0), (0, 0, 255)]:
        mask = near(pixels, colour)
        assert mask.sum() == 40 * 40  # each 5 px image enlarged 8 times to the 40 px panel, unblurred
        centres.append(np.argwhere(mask)[:, 1].mean())
    assert centres == sorted(centres)  # left to right, in the order given


def test_predictions_figure_draws_channelless_images_as_grey_with_full_contrast():
    ramp = np.tile(np.arange(5, dtype=np.float32) * 10 + 3, (5, 1))  # columns 3, 13, ..., 43
    channelless = png(predictions_figure, ramp[None], [("a", "black")], dpi=40, panel_inches=1.0)
    one_channel = png(predictions_figure, ramp[None, None], [("a", "black")], dpi=40, panel_inches=1.0)
    np.testing.assert_array_equal(channelless, one_channel)  # [N, H, W] is [N, 1, H, W]
    # Stretched to the image's own range: black, four steps of grey, white; 8 x 40 pixels each.
    greys = channelless[(channelless[:, :, 0] == channelless[:, :, 1]) & (channelless[:, :, 1] == channelless[:, :, 2])]
    values, counts = np.unique(greys[:, 0], return_counts=True)
    for expected in (0, 64, 128, 191):
        (found,) = np.flatnonzero(np.abs(values.astype(int) - expected) <= 1)
        assert counts[found] >= 8 * 40
    flat = png(predictions_figure, np.full((1, 5, 5), 7.0), [("a", "black")], dpi=40, panel_inches=1.0)
    assert flat.shape == channelless.shape  # a constant image: no division by zero


def test_predictions_figure_refuses_what_it_cannot_draw():
    titles = [("a", "black")] * 3
    with pytest.raises(ValueError, match="images expects"):
        predictions_figure(np.zeros((3, 2, 5, 5)), titles)
    with pytest.raises(ValueError, match="titles has 2 entries for 3 images"):
        predictions_figure(np.zeros((3, 5, 5)), titles[:2])


# ---------------------------------------------------------------------------
# the confusion matrix
# ---------------------------------------------------------------------------


def cell_colours(counts: np.ndarray, names: list[str]) -> np.ndarray:
    """The colour of each cell of the drawn matrix, ``[C, C, 3]``, read from the PNG near each cell's corner."""
    figure = confusion_matrix_figure(counts, names, dpi=60)
    pixels = png(lambda: figure)
    (axes,) = figure.axes
    classes = counts.shape[0]
    colours = np.zeros((classes, classes, 3), dtype=np.int64)
    for row in range(classes):
        for col in range(classes):
            # A quarter cell in from the top left corner: inside the cell, clear of its centred count.
            x, y = axes.transData.transform((col - 0.3, row - 0.3))
            colours[row, col] = pixels[pixels.shape[0] - 1 - int(y), int(x)]
    return colours


def test_confusion_matrix_cells_tell_the_counts_apart():
    counts = np.array([[9, 1, 0], [2, 6, 4], [0, 4, 7]])
    colours = cell_colours(counts, ["cat", "dog", "bird"])
    brightness = colours.sum(axis=2)
    flat_counts, flat_brightness = counts.ravel(), brightness.ravel()
    for a in range(9):
        for b in range(9):
            if flat_counts[a] < flat_counts[b]:
                assert flat_brightness[a] > flat_brightness[b]  # more samples: a darker blue
            elif flat_counts[a] == flat_counts[b]:
                assert flat_brightness[a] == flat_brightness[b]
    assert (colours[counts == 0] >= 245).all()  # empty cells are (nearly) white
    assert (colours[..., 2] >= colours[..., 0]).all()  # every cell is a shade of blue


def test_confusion_matrix_png_changes_with_one_sample_moved_and_not_otherwise():
    names = ["cat", "dog", "price in $ (a $ sign is not mathtext)"]
    counts = np.array([[5, 1, 0], [2, 7, 1], [0, 0, 9]])
    drawn = png(confusion_matrix_figure, counts, names, dpi=50)
    np.testing.assert_array_equal(png(confusion_matrix_figure, counts, names, dpi=50), drawn)  # deterministic
    moved = counts.copy()
    moved[0, 0], moved[0, 1] = 4, 2
    other = png(confusion_matrix_figure, moved, names, dpi=50)
    assert other.shape == drawn.shape and not np.array_equal(other, drawn)


def test_confusion_matrix_refuses_what_it_cannot_draw():
    counts = np.eye(3, dtype=np.int64)
    with pytest.raises(ValueError, match="class_names has 2 names for 3 classes"):
        confusion_matrix_figure(counts, ["a", "b"])
    with pytest.raises(ValueError, match="square"):
        confusion_matrix_figure(np.zeros((2, 3)), ["a", "b"])


# ---------------------------------------------------------------------------
# memory and the worker's imports
# ---------------------------------------------------------------------------


def resident_mib() -> float:
    """This process's resident set size, from /proc/self/statm (pages)."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="reads RSS from /proc (Linux)")
def test_hundreds_of_figures_neither_stay_alive_nor_grow_memory():
    images = np.random.default_rng(0).random((2, 1, 8, 8), dtype=np.float32)
    titles = prediction_titles(torch.tensor([[0.3, 0.7], [0.6, 0.4]]), torch.tensor([1, 1]), ["a", "b"])
    counts = np.array([[3, 1], [0, 2]])
    drawn: list[weakref.ref[Figure]] = []

    def draw(index: int) -> Figure:
        # The plugin's figures, small; every 20th a confusion matrix.  Each is saved as the worker saves it.
        if index % 20 == 0:
            figure = confusion_matrix_figure(counts, ["a", "b"], dpi=40, figsize=(1.0, 1.0))
        else:
            figure = predictions_figure(images, titles, dpi=40, panel_inches=1.0)
        drawn.append(weakref.ref(figure))
        return figure

    for index in range(40):  # warm-up: fonts loaded, matplotlib's caches filled
        render_png(draw, (index,), {})
    gc.collect()
    before = resident_mib()
    for index in range(300):
        render_png(draw, (index,), {})
    gc.collect()
    after = resident_mib()
    assert [ref for ref in drawn if ref() is not None] == []  # nothing keeps a figure (as pyplot would)
    # A figure kept alive holds about 140 KiB (predictions) or 390 KiB (matrix): keeping the 300 would
    # add over 40 MiB.  Drawing and letting go settles within the warm-up.
    assert after - before < 12, f"RSS grew by {after - before:.1f} MiB over 300 figures"


def test_the_render_worker_side_does_not_import_torch():
    # The worker unpickles tbhooks_figures.draw.* and draws with render: both must stay light, or
    # every run's worker pays seconds of torch import before its first figure.
    code = (
        "import io, sys, numpy as np\n"
        "from tbhooks_figures import draw, render\n"
        "render.tbhooks_warm_up()\n"
        "draw.draw_confusion_matrix(np.eye(2, dtype=np.int64), ['a', 'b'], 50).savefig(io.BytesIO(), format='png')\n"
        "draw.draw_predictions(np.zeros((1, 4, 4)), [('a', 'red')], 50).savefig(io.BytesIO(), format='png')\n"
        "print(sorted({'torch', 'tbhooks', 'matplotlib.pyplot'} & set(sys.modules)))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_the_plugin_module_does_not_import_matplotlib():
    # The training process imports the plugin (and draw, to name its functions); matplotlib stays in the worker.
    code = "import sys, tbhooks_figures.plugin; print('matplotlib' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"
