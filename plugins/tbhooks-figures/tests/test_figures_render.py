"""The figures plugin's pure parts: the counts, the titles and colours, the figures, and memory."""

from __future__ import annotations

import gc
import io
import os

import matplotlib
import numpy as np
import pytest
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image
from tbhooks_figures import render
from tbhooks_figures.plugin import confusion_counts, image_batch, prediction_titles
from tbhooks_figures.render import clear_templates, render_confusion_matrix, render_predictions

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
# templates: a figure drawn into a kept template is the figure a full draw gives
# ---------------------------------------------------------------------------


@pytest.fixture
def fresh():
    """No templates or glyphs kept from other tests, before or after."""
    clear_templates()
    yield
    clear_templates()


def assert_same_pixels(ours: np.ndarray, reference: np.ndarray) -> None:
    assert ours.dtype == np.uint8 and ours.shape == reference.shape
    differ = np.abs(ours.astype(np.int16) - reference).max(axis=-1) > 0
    where = np.argwhere(differ)
    assert not differ.any(), f"{differ.sum()} pixels differ, the first at (row, column) {where[:5].tolist()}"


def matrices(classes: int, seed: int) -> list[np.ndarray]:
    """Counts of every kind the cell numbers meet: small, wide (wider than a cell at 50 dpi), all zero, negative."""
    rng = np.random.default_rng(seed)
    wide = rng.integers(0, 10**7, (classes, classes))
    negative = rng.integers(0, 30, (classes, classes))
    negative[0, -1] = -7  # not digits: that cell is drawn as a Text
    return [rng.integers(0, 40, (classes, classes)), wide, np.zeros((classes, classes), dtype=np.int64), negative]


def reference_confusion_matrix(counts, names, *, dpi=100, figsize=None) -> np.ndarray:
    """The confusion matrix drawn the plain way: the same figure with every artist in it (each cell's
    number a ``Text``), in one full draw."""
    counts = np.asarray(counts).astype(np.int64)
    layout = render._matrix_layout([render._short(str(name)) for name in names], dpi, figsize)
    figure, axes, image = render._matrix_figure(layout)
    peak, title = render._matrix_summary(counts)
    image.set_data(counts)
    image.set_clim(0, peak)
    for row in range(layout.classes):
        for col in range(layout.classes):
            value = int(counts[row, col])
            colour = "white" if value > int(counts.max()) / 2 else "black"
            axes.text(col, row, str(value), ha="center", va="center", fontsize=layout.fontsize, color=colour)
    axes.set_title(title, fontsize=layout.fontsize)
    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


@pytest.mark.parametrize(
    ("names", "dpi", "figsize"),
    [
        (
            ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"],
            100,
            None,
        ),
        (["cat", "dog", "price in $ (a $ sign is not mathtext)"], 50, None),
        (["a", "b"], 40, (1.0, 1.0)),
        (["only"], 137, None),
    ],
)
def test_confusion_matrix_drawn_into_its_template_is_the_full_draw(fresh, names, dpi, figsize):
    # Each matrix is drawn into the template the previous one left (its numbers, colours and title
    # overwritten), compared with matplotlib drawing the same figure with every artist in one draw,
    # and with a matrix drawn from a new template.
    first = np.full((len(names), len(names)), 3)
    render_confusion_matrix(first, names, dpi=dpi, figsize=figsize)
    for counts in matrices(len(names), seed=dpi):
        pixels = render_confusion_matrix(counts, names, dpi=dpi, figsize=figsize)
        assert_same_pixels(pixels, reference_confusion_matrix(counts, names, dpi=dpi, figsize=figsize))
    clear_templates()
    assert_same_pixels(render_confusion_matrix(counts, names, dpi=dpi, figsize=figsize), pixels)


def test_confusion_matrix_template_redraws_inward_ticks_and_grid_in_order(fresh):
    # Ticks pointing into the matrix and grid lines across it are drawn over the image: the template
    # draws them again after it, in the order of a full draw (axis below the frame, thick frame).
    names = ["cat", "dog", "bird", "fish"]
    style = {"xtick.direction": "in", "ytick.direction": "inout", "axes.grid": True, "axes.linewidth": 2.5}
    with matplotlib.rc_context(style):
        for counts in matrices(4, seed=1)[:2]:
            pixels = render_confusion_matrix(counts, names, dpi=77)
            assert_same_pixels(pixels, reference_confusion_matrix(counts, names, dpi=77))


def test_confusion_matrix_templates_follow_alternating_class_lists(fresh):
    # One process draws the matrices of two class lists in turn: each is drawn into its own template,
    # and no more templates are kept than the limit.
    cats, dogs = ["cat", "lion", "lynx"], ["pug", "collie", "husky"]
    counts = np.array([[5, 1, 0], [2, 7, 1], [0, 0, 9]])
    for names in (cats, dogs, cats, dogs):
        assert_same_pixels(
            render_confusion_matrix(counts, names, dpi=60), reference_confusion_matrix(counts, names, dpi=60)
        )
    assert len(render._MATRIX_TEMPLATES) == 2
    kept = render._MATRIX_TEMPLATES.get(render._matrix_layout(cats, 60, None))
    render_confusion_matrix(counts.T, cats, dpi=60)
    assert render._MATRIX_TEMPLATES.get(render._matrix_layout(cats, 60, None)) is kept  # drawn into, not rebuilt
    for index in range(render._TEMPLATES_KEPT + 2):
        render_confusion_matrix(counts, [f"class {index}", "b", "c"], dpi=60)
    assert len(render._MATRIX_TEMPLATES) == render._TEMPLATES_KEPT


def reference_predictions(images, titles, *, dpi=100, panel_inches=2.0, columns=4) -> np.ndarray:
    """The predictions figure drawn the plain way: the float grid placed with ``figimage`` and the titles as
    ``Text``, in one full draw (what ``render_predictions`` did before it kept templates)."""
    rgb = render._as_rgb_images(images)
    layout = render._panel_layout(rgb.shape[0], dpi, panel_inches, columns)
    grid = np.ones((layout.height, layout.width, 3), dtype=np.float32)
    for index in range(layout.count):
        row, col = divmod(index, layout.cols)
        image = render._fit(rgb[index], layout.panel)
        top = row * layout.cell_h + layout.title_px + (layout.panel - image.shape[0]) // 2
        left = col * layout.cell_w + layout.gap // 2 + (layout.panel - image.shape[1]) // 2
        grid[top : top + image.shape[0], left : left + image.shape[1]] = image
    figure = Figure(figsize=(layout.width / dpi, layout.height / dpi), dpi=dpi)
    figure.figimage(grid, xo=0, yo=0, origin="upper")
    for index, (text, colour) in enumerate(titles):
        row, col = divmod(index, layout.cols)
        figure.text(
            (col * layout.cell_w + layout.cell_w / 2) / layout.width,
            1 - (row * layout.cell_h + layout.title_px / 2) / layout.height,
            text,
            color=colour,
            fontsize=layout.fontsize,
            ha="center",
            va="center",
            multialignment="center",
            parse_math=False,
        )
    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def test_predictions_drawn_into_their_template_are_the_full_draw(fresh):
    rng = np.random.default_rng(4)
    images = rng.standard_normal((8, 1, 28, 28)).astype(np.float32)
    names = ["Sneaker", "Bag", "Ankle boot", "T-shirt/top"]

    def titles() -> list[tuple[str, str]]:
        # A new first line every time; the second lines come back (the same images each evaluation).
        return [
            (
                f"{names[rng.integers(4)]}, {rng.uniform(0, 100):.1f}%\n(label: {names[index % 4]})",
                ("green", "red")[index % 2],
            )
            for index in range(8)
        ]

    for _ in range(3):
        wanted = titles()
        pixels = render_predictions(images, wanted)
        assert_same_pixels(pixels, reference_predictions(images, wanted))
    template = render._PREDICTION_TEMPLATES.get(render._panel_layout(8, 100, 2.0, 4))
    assert "(label: Bag)" in {key[0] for key in template.lines._lines}  # kept, and pasted the second and third time
    clear_templates()
    assert_same_pixels(render_predictions(images, wanted), pixels)


@pytest.mark.skipif(
    tuple(int(part) for part in matplotlib.__version__.split(".")[:2]) < (3, 11),
    reason="matplotlib draws text glyph by glyph from 3.11 on; before, every title line goes to draw_text",
)
def test_new_title_lines_are_drawn_from_kept_glyph_bitmaps(fresh, monkeypatch):
    # A new first line is laid out by matplotlib and its glyphs blended from bitmaps rendered once per
    # glyph and sub-pixel offset: the figure is still the full draw's, pixel for pixel (the test above).
    bitmaps = render._GlyphBitmaps()
    assert bitmaps.usable()
    monkeypatch.setattr(render, "_GLYPH_BITMAPS", bitmaps)
    images = np.zeros((4, 1, 8, 8), dtype=np.float32)
    first = [(f"Coat, {value:.1f}%\n(label: Bag)", "red") for value in (12.5, 47.3, 88.1, 3.0)]
    assert_same_pixels(render_predictions(images, first), reference_predictions(images, first))
    kept = len(bitmaps._bitmaps)
    assert kept > 0
    again = [(f"Coat, {value:.1f}%\n(label: Bag)", "red") for value in (21.5, 74.3, 18.8, 30.0)]
    assert_same_pixels(render_predictions(images, again), reference_predictions(images, again))
    assert len(bitmaps._bitmaps) < 2 * kept  # mostly the same glyphs at the same offsets: reused


def test_glyph_bitmaps_that_do_not_match_matplotlib_are_not_used(fresh, monkeypatch):
    # The check runs once per process: a way of drawing that gives other pixels than draw_text (here,
    # one pixel to the right) is found out, and every line then goes to matplotlib's own draw_text.
    bitmaps = render._GlyphBitmaps()
    draw = render._GlyphBitmaps.draw

    def off_by_one(self, renderer, gc, x, y, s, prop, mtext):
        draw(self, renderer, gc, x + 1, y, s, prop, mtext)

    monkeypatch.setattr(render._GlyphBitmaps, "draw", off_by_one)
    assert not bitmaps.usable()
    monkeypatch.setattr(render, "_GLYPH_BITMAPS", bitmaps)
    images = np.zeros((2, 1, 8, 8), dtype=np.float32)
    titles = [("Coat, 12.5%\n(label: Bag)", "red"), ("Bag, 99.0%\n(label: Bag)", "green")]
    assert_same_pixels(render_predictions(images, titles), reference_predictions(images, titles))


def test_predictions_titles_over_images_and_neighbours_are_drawn_as_a_full_draw_does(fresh):
    # Titles of many lines run over the images, long ones over the next panel's title, white ones
    # leave nothing on white, "$" is no mathtext: such lines are never pasted where they were not white.
    images = np.random.default_rng(5).random((4, 3, 9, 9)).astype(np.float32)
    titles = [
        ("a\nb\nc\nd\ne", "black"),
        ("price $5 $x$\n(label: y)", "red"),
        ("a very long title that runs into the next panel, 99.9%\n(label: x)", "green"),
        ("white\n(label: x)", "white"),
    ]
    for turn in range(3):
        shifted = titles[turn:] + titles[:turn]  # each title over each kind of neighbour
        pixels = render_predictions(images, shifted, dpi=60, panel_inches=1.0, columns=2)
        assert_same_pixels(pixels, reference_predictions(images, shifted, dpi=60, panel_inches=1.0, columns=2))


def test_predictions_title_lines_are_pasted_only_onto_white(fresh):
    # The first title, when long, runs over the second title's lines.  In the first figure those lines are
    # drawn over it: what is kept of them then (nothing) must not come back in the second figure, where
    # they are drawn on white and kept; in the third they must be drawn over the long title, not pasted.
    images = np.zeros((2, 1, 8, 8), dtype=np.float32)
    short = ("no\n(label: no)", "black")
    across = "runs over the next panel's title, " * 3
    long = (f"a first line that {across}\nand a second one that {across}", "green")
    second = ("yes, 99.0%\n(label: yes)", "red")
    for first in (long, short, long):
        pixels = render_predictions(images, [first, second], dpi=60, panel_inches=1.5, columns=2)
        assert_same_pixels(pixels, reference_predictions(images, [first, second], dpi=60, panel_inches=1.5, columns=2))


def test_warm_up_leaves_the_default_predictions_template_and_digits_ready(fresh):
    render.tbhooks_warm_up()
    layout = render._panel_layout(8, 100, 2.0, 4)
    template = render._PREDICTION_TEMPLATES.get(layout)
    assert template is not None
    kept = len(render._GLYPHS._bitmaps)
    assert kept >= 40  # ten digits at two sub-pixel offsets across and two down
    names = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
    render_confusion_matrix(np.random.default_rng(6).integers(0, 1000, (10, 10)), names)
    render_predictions(np.ones((8, 1, 28, 28)), [("Bag, 50.0%\n(label: Bag)", "green")] * 8)
    assert render._PREDICTION_TEMPLATES.get(layout) is template  # the first real figure was drawn into it
    assert len(render._GLYPHS._bitmaps) == kept  # no digit had to be drawn for the first real matrix


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


def test_confusion_matrix_cells_are_filled_without_the_image_draw_where_that_is_exact(fresh):
    # The template fills each cell's square with numpy (a third of the figure's time) when a probe
    # matrix drawn both ways gives the same pixels; the pixel tests above compare the result with a
    # full draw.  One class has nothing to probe: the image draws it.
    names = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
    assert render._MatrixTemplate(render._matrix_layout(names, 100, None)).fill
    assert not render._MatrixTemplate(render._matrix_layout(["only"], 137, None)).fill
