"""The figures plugin's pure parts: the counts, the titles and colours, the figures, and memory."""

from __future__ import annotations

import gc
import io
import os

import numpy as np
import pytest
import torch
from PIL import Image
from tbhooks_figures.plugin import confusion_counts, image_batch, prediction_titles
from tbhooks_figures.render import render_confusion_matrix, render_predictions

GREEN = (0, 128, 0)  # matplotlib's "green"
RED = (255, 0, 0)  # matplotlib's "red"


def near(pixels: np.ndarray, colour: tuple[int, int, int], tolerance: int = 40) -> np.ndarray:
    """Mask of the pixels within ``tolerance`` of ``colour`` on every channel."""
    return (np.abs(pixels.astype(np.int16) - np.array(colour, dtype=np.int16)) <= tolerance).all(axis=-1)


def png_roundtrip(pixels: np.ndarray) -> np.ndarray:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB"))


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
    ],
)
def test_image_batch_accepts_only_image_shapes(shape, dtype, expected):
    assert image_batch(torch.zeros(shape, dtype=dtype)) is expected


def test_image_batch_refuses_non_tensors():
    assert image_batch({"pixels": torch.zeros(4, 1, 8, 8)}) is False


# ---------------------------------------------------------------------------
# the figures
# ---------------------------------------------------------------------------


def test_predictions_figure_colours_each_title_and_decodes():
    images = np.zeros((2, 1, 8, 8), dtype=np.float32)  # black images: no green or red comes from them
    titles = prediction_titles(torch.tensor([[0.9, 0.1], [0.8, 0.2]]), torch.tensor([0, 1]), ["yes", "no"])
    assert [colour for _, colour in titles] == ["green", "red"]

    pixels = render_predictions(images, titles, dpi=60, panel_inches=1.0, columns=2)
    assert pixels.dtype == np.uint8 and pixels.ndim == 3 and pixels.shape[2] == 3
    half = pixels.shape[1] // 2
    left, right = pixels[:, :half], pixels[:, half:]
    assert near(left, GREEN).sum() > 5 and near(left, RED).sum() == 0  # the right prediction
    assert near(right, RED).sum() > 5 and near(right, GREEN).sum() == 0  # the wrong one
    np.testing.assert_array_equal(png_roundtrip(pixels), pixels)


def test_predictions_figure_draws_rgb_and_channelless_images():
    rgb = np.zeros((3, 3, 5, 5), dtype=np.float32)
    rgb[:, 2] = 1.0  # pure blue images
    titles = [("a", "black")] * 3
    pixels = render_predictions(rgb, titles, dpi=40, panel_inches=1.0)
    assert near(pixels, (0, 0, 255), tolerance=0).sum() >= 3 * 40 * 40  # each 5 px image enlarged 8x
    flat = render_predictions(np.full((3, 5, 5), 7.0), titles, dpi=40, panel_inches=1.0)  # constant: no NaN
    assert flat.dtype == np.uint8
    with pytest.raises(ValueError, match="images expects"):
        render_predictions(np.zeros((3, 2, 5, 5)), titles)
    with pytest.raises(ValueError, match="titles has 2 entries for 3 images"):
        render_predictions(rgb, titles[:2])


def test_confusion_matrix_figure_decodes_and_tells_counts_apart():
    names = ["cat", "dog", "price in $ (a $ sign is not mathtext)"]
    counts = np.array([[5, 1, 0], [2, 7, 1], [0, 0, 9]])
    pixels = render_confusion_matrix(counts, names, dpi=50)
    assert pixels.dtype == np.uint8 and pixels.shape[2] == 3
    np.testing.assert_array_equal(png_roundtrip(pixels), pixels)
    np.testing.assert_array_equal(render_confusion_matrix(counts, names, dpi=50), pixels)  # deterministic
    other = counts.copy()
    other[0, 0], other[0, 1] = 4, 2
    assert not np.array_equal(render_confusion_matrix(other, names, dpi=50), pixels)
    with pytest.raises(ValueError, match="class_names has 2 names for 3 classes"):
        render_confusion_matrix(counts, names[:2])


# ---------------------------------------------------------------------------
# memory
# ---------------------------------------------------------------------------


def resident_mib() -> float:
    """This process's resident set size, from /proc/self/statm (pages)."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="reads RSS from /proc (Linux)")
def test_a_thousand_figures_do_not_grow_memory():
    images = np.random.default_rng(0).random((1, 1, 8, 8), dtype=np.float32)
    titles = prediction_titles(torch.tensor([[0.3, 0.7]]), torch.tensor([1]), ["a", "b"])
    counts = np.array([[3, 1], [0, 2]])

    def draw(index: int) -> None:
        # The plugin's own builders, small (1 inch, 40 dpi); every 20th figure a confusion matrix.
        if index % 20 == 0:
            render_confusion_matrix(counts, ["a", "b"], dpi=40, figsize=(1.0, 1.0))
        else:
            render_predictions(images, titles, dpi=40, panel_inches=1.0)

    for index in range(50):  # warm-up: fonts loaded, matplotlib's caches filled
        draw(index)
    gc.collect()
    before = resident_mib()
    for index in range(500):
        draw(index)
    gc.collect()
    halfway = resident_mib()
    for index in range(500, 1000):
        draw(index)
    gc.collect()
    after = resident_mib()
    # The bounds, from measurements on Linux (matplotlib 3.11, this mix of figures): a figure kept
    # alive (what pyplot's registry does to a figure nobody closes) holds about 140 KiB (predictions)
    # or 390 KiB (confusion matrix), so keeping them would add about 155 MiB over the 1000 and 78 MiB
    # over the last 500.  Drawing and letting go adds about 5 MiB, all of it in the first ~250
    # figures (allocator and matplotlib's caches settling), and 0.05 MiB over the last 500.  Each
    # bound is several times the noise and far below a leak of even one figure in twenty.
    assert after - before < 24, f"RSS grew by {after - before:.1f} MiB over 1000 figures"
    assert after - halfway < 4, f"RSS grew by {after - halfway:.1f} MiB over the last 500 figures"


def test_the_render_worker_side_does_not_import_torch():
    # The worker unpickles tbhooks_figures.draw.* and draws with render: both must stay light,
    # or every run's worker pays seconds of torch import before its first figure.
    import subprocess
    import sys

    code = (
        "import sys, tbhooks_figures.draw, tbhooks_figures.render; "
        "print(sorted({'torch', 'tbhooks'} & set(sys.modules)))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
