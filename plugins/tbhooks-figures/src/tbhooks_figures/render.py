"""Figure builders: data in, an RGB ``uint8`` array ``[H, W, 3]`` out.

These run in the run's render worker process (``run.render_image``), never on the
training thread.  No function here touches ``matplotlib.pyplot``: each
figure is a bare :class:`matplotlib.figure.Figure` drawn by its own
``FigureCanvasAgg``, so no global figure registry keeps it alive.  The pixels
are copied out of the canvas before they are returned.

Every string that comes from the user (class names) is drawn with
``parse_math=False``, so a ``$`` in a class name is shown as is instead of
failing as unbalanced mathtext.

Speed: templates
----------------
A run's close waits for its last figures, so they are drawn from templates
kept in the process.  A template is a figure whose layout is fixed by the
call's layout arguments (class names, dpi, size; image count, dpi, panel size,
columns), drawn once in full; its canvas pixels *without* the parts that
depend on the data are kept.  A later call with the same layout restores
those pixels and draws only what changes, in the order a full draw would:

* predictions: the image panels are pasted into the canvas as ``uint8`` pixels
  (what ``figimage`` of the float grid draws), then matplotlib draws each
  title; a title line drawn before onto white is pasted instead
  (:class:`_LinesOnWhite`), and a new one is laid out by matplotlib and its
  glyphs blended from bitmaps rendered once (:class:`_GlyphBitmaps`);
* confusion matrix: matplotlib draws the image of counts, then the frame and
  tick marks that overlap its edge; then the cell numbers, then the title
  (its glyphs from :class:`_GlyphBitmaps` too).
  The cell numbers are the costly part (a hundred texts, about a millisecond
  each), so they are composited from digits matplotlib drew once
  (:class:`_Glyphs`), blended with Agg's own formula.

The result is, pixel for pixel, the figure one full matplotlib draw of the
same artists gives (``tests/test_figures_render.py`` draws both and compares).  For that the confusion
matrix is laid out on whole pixels: the matrix's corner and each cell's side
are rounded to pixels, so that every cell number sits at one of two sub-pixel
offsets and a few cached digits serve every cell.  This moves the matrix by
less than a pixel, and changes its side by at most half a pixel per class
(not at all at the default size).

At most :data:`_TEMPLATES_KEPT` templates of each figure are kept (least
recently used first out), a few MiB each.  A template keeps the rcParams
(style) it was built with: a process that changes them calls
:func:`clear_templates`.  The render worker draws one figure
at a time; a lock keeps the templates to one drawer at a time where a process
draws from several threads (the in-process fallback, one thread per run).
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from matplotlib.artist import Artist
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.font_manager import FontProperties
from matplotlib.image import AxesImage
from matplotlib.text import Text
from matplotlib.transforms import IdentityTransform

_NAME_CHARS = 24
"""Class names longer than this are cut (with an ellipsis) on the axes of the confusion matrix."""

_TEMPLATES_KEPT = 3
"""Templates kept per figure kind: a run draws one or two layouts (say, a matrix for each of two
class lists); a template holds a figure, its canvas and, for a matrix, a copy of the canvas pixels
(1.4 MiB each at the default size)."""

_CELL_INCHES = 0.45
"""Inches per class when the confusion matrix's size is ours to choose."""


def tbhooks_warm_up() -> None:
    """Draw both figures once when the render worker starts (it calls this after the import).

    A process's first matplotlib figure loads fonts and fills caches, which
    costs more than the figure itself; done here, it overlaps with training
    instead of delaying the first evaluation's figures (and a short run's
    close).  At the plugin's default size and dpi, this also leaves the
    predictions template and the confusion matrix's glyphs ready for the
    first real figures (the matrix's template depends on the class names, so
    the first real matrix builds its own).
    """
    names = [str(i) for i in range(10)]
    render_confusion_matrix(np.arange(100, dtype=np.int64).reshape(10, 10), names, dpi=100)
    render_predictions(np.zeros((8, 1, 28, 28), dtype=np.float32), [("0, 0.0%\n(label: 1)", "green")] * 8, dpi=100)
    # Every digit at each sub-pixel offset the whole-pixel layout can give a cell number.
    with _LOCK:
        _GLYPHS.prepare(_matrix_fontsize(), 100, [(ch, qx, qy) for ch in _DIGITS for qx in (0, 32) for qy in (0, 32)])


def clear_templates() -> None:
    """Forget every template and glyph: the next figure of each kind is drawn from scratch.

    For tests (a figure drawn from a fresh template is the reference a cached
    one is compared with) and for a worker that wants its memory back.
    """
    with _LOCK:
        _MATRIX_TEMPLATES.clear()
        _PREDICTION_TEMPLATES.clear()
        _GLYPHS.clear()
        _GLYPH_BITMAPS.clear()


def _short(name: str) -> str:
    return name if len(name) <= _NAME_CHARS else name[: _NAME_CHARS - 1] + "…"


class _LRU:
    """A tiny least-recently-used cache: at most ``size`` values, the oldest dropped first."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._items: OrderedDict[Hashable, Any] = OrderedDict()

    def get(self, key: Hashable) -> Any:
        value = self._items.get(key)
        if value is not None:
            self._items.move_to_end(key)
        return value

    def put(self, key: Hashable, value: Any) -> None:
        self._items[key] = value
        self._items.move_to_end(key)
        while len(self._items) > self.size:
            self._items.popitem(last=False)

    def clear(self) -> None:
        self._items.clear()

    def __len__(self) -> int:
        return len(self._items)


_MATRIX_TEMPLATES = _LRU(_TEMPLATES_KEPT)
_PREDICTION_TEMPLATES = _LRU(_TEMPLATES_KEPT)
_LOCK = threading.RLock()
"""Held while a template (or the glyphs) is used or built."""


def _canvas_pixels(canvas: FigureCanvasAgg) -> np.ndarray:
    """A writable ``[H, W, 4]`` view of the canvas's RGBA pixels (valid until its renderer changes)."""
    return np.asarray(canvas.buffer_rgba())


def _rgb(pixels: np.ndarray) -> np.ndarray:
    """A copy of the RGB planes of ``[H, W, 4]`` pixels (channel by channel: numpy copies a
    ``[..., :3]`` slice element by element, ten times slower)."""
    rgb = np.empty((*pixels.shape[:2], 3), dtype=np.uint8)
    for channel in range(3):
        rgb[..., channel] = pixels[..., channel]
    return rgb


def _whole_pixel_inches(pixels: int, dpi: float) -> float:
    """Inches that make exactly ``pixels`` pixels at ``dpi``: the canvas truncates ``inches * dpi``,
    so a quotient that multiplies back to a hair under ``pixels`` is nudged up."""
    inches = pixels / dpi
    while inches * dpi < pixels:
        inches = math.nextafter(inches, math.inf)
    return inches


def _blend(pixels: np.ndarray, coverage: np.ndarray, colour: np.ndarray) -> None:
    """Blend ``colour`` into opaque RGBA ``pixels`` (in place) by ``coverage``, as Agg draws text.

    Agg (matplotlib's ``fixed_blender_rgba_plain``, used by ``draw_text_image``)
    copies the colour where the coverage is full, leaves the pixel where it is
    zero, and otherwise computes, in integers, with ``a`` the coverage and the
    destination alpha 255::

        ((c << 8) - 255 p) a + (255 p << 8)
        -----------------------------------
                    65280 + a
    """
    cover = coverage.astype(np.int32)[..., None]
    base = pixels[..., :3].astype(np.int32) * 255
    mixed = (((colour << 8) - base) * cover + (base << 8)) // (65280 + cover)
    pixels[..., :3] = np.where(cover == 255, colour, mixed)


# ---------------------------------------------------------------------------
# predictions vs. actuals
# ---------------------------------------------------------------------------


def _as_rgb_images(images: np.ndarray) -> np.ndarray:
    """``[N, C, H, W]`` (C 1 or 3) or ``[N, H, W]`` -> ``[N, H, W, 3]`` floats in [0, 1].

    Each image is stretched to its own min..max, so normalised inputs (mean
    0, std 1) and raw 0..255 inputs both show with full contrast.
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


@dataclass(frozen=True)
class _PanelLayout:
    """Where the predictions figure puts things, in pixels (rows from the top)."""

    count: int
    cols: int
    panel: int
    title_px: int
    gap: int
    fontsize: float
    dpi: int

    @property
    def cell_w(self) -> int:
        return self.panel + self.gap

    @property
    def cell_h(self) -> int:
        return self.panel + self.title_px

    @property
    def width(self) -> int:
        return self.cols * self.cell_w

    @property
    def height(self) -> int:
        return math.ceil(self.count / self.cols) * self.cell_h


def _panel_layout(count: int, dpi: int, panel_inches: float, columns: int) -> _PanelLayout:
    panel = max(8, round(panel_inches * dpi))
    fontsize = min(10.0, max(4.0, panel_inches * 4.0))
    return _PanelLayout(
        count=count,
        cols=max(1, min(columns, count)),
        panel=panel,
        title_px=math.ceil(2 * fontsize * 1.3 / 72 * dpi) + 4,  # two lines of text and a little air
        gap=max(2, panel // 16),
        fontsize=fontsize,
        dpi=dpi,
    )


def _panel_grid(rgb: np.ndarray, layout: _PanelLayout) -> np.ndarray:
    """The figure's pixels under the titles: white, with each image (as ``uint8``) in its panel.

    ``(x * 255).astype(uint8)`` is how matplotlib turns a float image into
    bytes, so this is what ``figimage`` of the float grid would draw.
    """
    grid = np.full((layout.height, layout.width, 3), 255, dtype=np.uint8)
    for index in range(layout.count):
        row, col = divmod(index, layout.cols)
        image = (_fit(rgb[index], layout.panel) * 255).astype(np.uint8)
        top = row * layout.cell_h + layout.title_px + (layout.panel - image.shape[0]) // 2
        left = col * layout.cell_w + layout.gap // 2 + (layout.panel - image.shape[1]) // 2
        grid[top : top + image.shape[0], left : left + image.shape[1]] = image
    return grid


def _panel_figure(layout: _PanelLayout) -> tuple[Figure, list[Text]]:
    """The predictions figure without pixels: one empty, centred title per panel."""
    figure = Figure(
        figsize=(_whole_pixel_inches(layout.width, layout.dpi), _whole_pixel_inches(layout.height, layout.dpi)),
        dpi=layout.dpi,
    )
    titles = []
    for index in range(layout.count):
        row, col = divmod(index, layout.cols)
        titles.append(
            figure.text(
                (col * layout.cell_w + layout.cell_w / 2) / layout.width,
                1 - (row * layout.cell_h + layout.title_px / 2) / layout.height,
                "",
                fontsize=layout.fontsize,
                ha="center",
                va="center",
                multialignment="center",
                parse_math=False,
            )
        )
    return figure, titles


class _GlyphBitmaps:
    """Agg's ``draw_text`` for a line of plain text, with each glyph's bitmap drawn once.

    Since matplotlib 3.11 Agg draws text glyph by glyph: it lays the line out
    (``FT2Font._layout``), then for each glyph has FreeType render it at the
    glyph's position in 1/64 pixel (``_set_transform``, ``_render_glyph``)
    and blends the bitmap into the canvas (``draw_text_image``).  Rendering
    a glyph at a position whole pixels away gives the same bitmap, moved by
    those pixels; so here each glyph is rendered once per font, size, dpi,
    hinting and sub-pixel offset, and later lines blend the kept bitmap
    with the same ``draw_text_image`` call.  The pixels are the ones
    ``draw_text`` gives: :meth:`usable` checks it once per process by
    drawing a sample both ways, and where it fails (another matplotlib, a
    private name missing) every line goes to ``draw_text``.

    It saves the rendering of each glyph and matplotlib's per-glyph transform
    arithmetic, about half a new line's time; the layout stays matplotlib's.
    """

    limit = 4096
    """Bitmaps kept (a few hundred bytes each); all are dropped when it is reached."""

    _SAMPLE = "Ankle Boot, 47.3% (label: T-shirt/top) 0123456789"

    def __init__(self) -> None:
        self._bitmaps: dict[Hashable, tuple[np.ndarray, int, int]] = {}
        self._usable: bool | None = None

    def clear(self) -> None:
        self._bitmaps.clear()

    def usable(self) -> bool:
        """Whether this matplotlib draws text as this class assumes (checked on first use)."""
        if self._usable is None:
            self._usable = False
            try:
                self._usable = self._check()
            except Exception:  # a private name missing or changed: matplotlib draws every line
                self._usable = False
        return self._usable

    def _check(self) -> bool:
        from matplotlib.backends.backend_agg import RendererAgg
        from matplotlib.ft2font import FT2Font

        if not all(
            hasattr(owner, name)
            for owner, name in (
                (RendererAgg, "_draw_text_glyphs_and_boxes"),
                (RendererAgg, "_prepare_font"),
                (FT2Font, "_layout"),
                (FT2Font, "_render_glyph"),
                (FT2Font, "_set_transform"),
            )
        ):
            return False
        drawn = []
        for own in (False, True, True):  # the second own draw uses the bitmaps the first one kept
            figure = Figure(figsize=(4.0, 0.5), dpi=100)
            text = figure.text(0.0131, 0.37, self._SAMPLE, fontsize=9, color="red", parse_math=False)
            canvas = FigureCanvasAgg(figure)
            canvas.draw()
            renderer = canvas.get_renderer()
            pixels = _canvas_pixels(canvas)
            pixels[...] = 255
            text.draw(_LinesVia(renderer, self) if own else renderer)
            drawn.append(pixels.copy())
        return bool((drawn[0] == drawn[1]).all() and (drawn[0] == drawn[2]).all() and (drawn[0] != 255).any())

    def draw(self, renderer: Any, gc: Any, x: float, y: float, s: str, prop: FontProperties, mtext: Any) -> None:
        """Draw line ``s`` as ``renderer.draw_text(gc, x, y, s, prop, 0, False, mtext)`` does."""
        from matplotlib.backends.backend_agg import get_hinting_flag
        from matplotlib.ft2font import RenderMode

        font = renderer._prepare_font(prop)
        flags = get_hinting_flag()
        items = font._layout(
            s,
            flags=flags,
            features=mtext.get_fontfeatures() if mtext is not None else None,
            language=mtext.get_language() if mtext is not None else None,
        )
        size = prop.get_size_in_points()
        dpi = renderer.dpi
        antialiased = gc.get_antialiased()
        height = renderer.height
        canvas_height = int(height)
        bitmaps = self._bitmaps
        draw_image = renderer._renderer.draw_text_image
        for item in items:
            font_object = item.ft_object
            # Agg's position of the glyph in 1/64 pixel (y up), as _draw_text_glyphs_and_boxes computes it.
            x64, y64 = round(0x40 * (x + item.x)), round(0x40 * (height - y + item.y))
            key = (font_object, size, dpi, item.glyph_index, x64 & 63, y64 & 63, flags, antialiased)
            bitmap = bitmaps.get(key)
            if bitmap is None:
                font_object.set_size(size, dpi)
                font_object._set_transform(_NO_ROTATION, [x64 & 63, y64 & 63])
                rendered = font_object._render_glyph(
                    item.glyph_index, flags, RenderMode.NORMAL if antialiased else RenderMode.MONO
                )
                buffer = np.array(rendered.buffer, dtype=np.uint8)  # a copy: FreeType reuses its own
                if not antialiased:
                    buffer *= 0xFF
                bitmap = (buffer, rendered.left, rendered.top)
                if len(bitmaps) >= self.limit:
                    bitmaps.clear()
                bitmaps[key] = bitmap
            buffer, left, top = bitmap
            draw_image(buffer, left + (x64 >> 6), canvas_height - top - (y64 >> 6) + buffer.shape[0], 0, gc)


_NO_ROTATION = np.array([[0x10000, 0], [0, 0x10000]])
_GLYPH_BITMAPS = _GlyphBitmaps()


def _text_renderer(renderer: Any) -> Any:
    """``renderer``, drawing plain lines from kept glyph bitmaps where that gives the same pixels."""
    return _LinesVia(renderer, _GLYPH_BITMAPS) if _GLYPH_BITMAPS.usable() else renderer


class _LinesVia:
    """A renderer whose ``draw_text`` draws plain lines at angle 0 through ``bitmaps``, unchecked (the
    check itself draws through it; elsewhere it stands in for a renderer only where ``bitmaps.usable()``);
    everything else goes to ``renderer``."""

    def __init__(self, renderer: Any, bitmaps: _GlyphBitmaps) -> None:
        self._renderer = renderer
        self._bitmaps = bitmaps

    def __getattr__(self, name: str) -> Any:
        return getattr(self._renderer, name)

    def draw_text(
        self,
        gc: Any,
        x: float,
        y: float,
        s: str,
        prop: FontProperties,
        angle: float,
        ismath: Any = False,
        mtext: Any = None,
    ) -> None:
        if angle or ismath:
            self._renderer.draw_text(gc, x, y, s, prop, angle, ismath, mtext)
        else:
            self._bitmaps.draw(self._renderer, gc, x, y, s, prop, mtext)


class _LinesOnWhite(_LinesVia):
    """Text lines as Agg drew them on white, pasted where the same line lands on white again.

    It stands in for a canvas's renderer while texts are drawn (every call
    goes through to the renderer but ``draw_text``, which ``Text.draw`` calls
    once per line with the line's position).  A line is kept when it was
    drawn into a white area (its pixels' box with a margin), and pasted
    only into a white area of the same shape at the same sub-pixel offset: the
    pixels are then the ones Agg would draw.  Any other line (rotated,
    mathtext, clipped, over something not white, off the canvas) is drawn by
    the renderer as usual.

    The prediction titles' second lines ``(label: ...)`` come back at every
    evaluation (the same first images are shown each time), so about half
    the title lines are pasted instead of laid out and rendered glyph by glyph.
    """

    limit = 256
    """Lines kept (least recently used first out); a line is a few KiB."""

    def __init__(self, renderer: Any) -> None:
        super().__init__(renderer, _GLYPH_BITMAPS)
        self._lines: OrderedDict[Hashable, tuple[np.ndarray, int, int, tuple[int, int, int, int]]] = OrderedDict()

    def draw_text(
        self,
        gc: Any,
        x: float,
        y: float,
        s: str,
        prop: FontProperties,
        angle: float,
        ismath: Any = False,
        mtext: Any = None,
    ) -> None:
        renderer = self._renderer
        features = (mtext.get_fontfeatures(), mtext.get_language()) if hasattr(mtext, "get_fontfeatures") else None
        if (
            angle
            or ismath
            or gc.get_clip_rectangle() is not None
            or gc.get_clip_path()[0] is not None
            or gc.get_hatch() is not None
            or gc.get_sketch_params() is not None
            or not (math.isfinite(x) and math.isfinite(y))
        ):
            renderer.draw_text(gc, x, y, s, prop, angle, ismath, mtext)
            return
        # ``Text.draw`` hands Agg ``y`` in pixels from the top (``flipy``), the baseline of the line.
        x64, y64 = round(x * _SUBPIXELS), round(y * _SUBPIXELS)
        x_whole, y_whole = x64 // _SUBPIXELS, y64 // _SUBPIXELS
        key = (
            s,
            hash(prop),
            renderer.dpi,
            tuple(gc.get_rgb()),
            gc.get_alpha(),
            gc.get_forced_alpha(),
            gc.get_antialiased(),
            x64 % _SUBPIXELS,
            y64 % _SUBPIXELS,
            repr(features),
        )
        pixels = np.asarray(renderer.buffer_rgba())
        height, width = pixels.shape[:2]
        line = self._lines.get(key)
        if line is not None:
            patch, top, left, (r0, r1, c0, c1) = line
            row, col = y_whole, x_whole
            area = pixels[row + r0 : row + r1, col + c0 : col + c1]
            if 0 <= row + r0 and row + r1 <= height and 0 <= col + c0 and col + c1 <= width and (area == 255).all():
                self._lines.move_to_end(key)
                pixels[row + top : row + top + patch.shape[0], col + left : col + left + patch.shape[1]] = patch
                return
            self._draw_line(gc, x, y, s, prop, mtext)
            return
        self._record(key, gc, x, y, s, prop, mtext, pixels)

    def _draw_line(self, gc: Any, x: float, y: float, s: str, prop: FontProperties, mtext: Any) -> None:
        if self._bitmaps.usable():
            self._bitmaps.draw(self._renderer, gc, x, y, s, prop, mtext)
        else:
            self._renderer.draw_text(gc, x, y, s, prop, 0.0, False, mtext)

    def _record(
        self, key: Hashable, gc: Any, x: float, y: float, s: str, prop: FontProperties, mtext: Any, pixels: np.ndarray
    ) -> None:
        """Draw the line; keep its pixels if it went onto white, well inside the area watched."""
        renderer = self._renderer
        height, width = pixels.shape[:2]
        em = prop.get_size_in_points() * renderer.dpi / 72
        row, col = round(y * _SUBPIXELS) // _SUBPIXELS, round(x * _SUBPIXELS) // _SUBPIXELS
        # The area watched, generous (an em and a half per character), cut to the canvas; rows run down
        # from the top, ``row`` is the baseline's.
        top, bottom = max(0, row - math.ceil(1.5 * em) - 2), min(height, row + math.ceil(em) + 2)
        left, right = max(0, col - math.ceil(em) - 2), min(width, col + math.ceil(1.5 * em * len(s)) + 2)
        before = pixels[top:bottom, left:right].copy()
        self._draw_line(gc, x, y, s, prop, mtext)
        after = pixels[top:bottom, left:right]
        changed = (after != before).any(axis=2)
        rows, cols = np.flatnonzero(changed.any(axis=1)), np.flatnonzero(changed.any(axis=0))
        margin = 2
        if (
            rows.size == 0  # nothing drawn: white on white, say
            or rows[0] < margin
            or cols[0] < margin
            or rows[-1] >= after.shape[0] - margin
            or cols[-1] >= after.shape[1] - margin
        ):
            return  # or the line reaches the edge of the area watched (or of the canvas)
        r0, r1 = int(rows[0]) - margin, int(rows[-1]) + 1 + margin
        c0, c1 = int(cols[0]) - margin, int(cols[-1]) + 1 + margin
        if not (before[r0:r1, c0:c1] == 255).all():
            return  # drawn over something that is not white
        patch = after[r0 + margin : r1 - margin, c0 + margin : c1 - margin].copy()
        # Offsets from the baseline's left end (row, col): the patch's, and the area that must be white.
        r0, r1, c0, c1 = r0 + top - row, r1 + top - row, c0 + left - col, c1 + left - col
        self._lines[key] = (patch, r0 + margin, c0 + margin, (r0, r1, c0, c1))
        while len(self._lines) > self.limit:
            self._lines.popitem(last=False)


class _PanelTemplate:
    """A drawn predictions figure of one layout, to draw the next figures of that layout into."""

    def __init__(self, layout: _PanelLayout) -> None:
        self.figure, self.titles = _panel_figure(layout)
        self.canvas = FigureCanvasAgg(self.figure)
        self.canvas.draw()  # lays out the (empty) titles; from now on only the titles are drawn
        self.lines = _LinesOnWhite(self.canvas.get_renderer())

    def draw(self, grid: np.ndarray, titles: Sequence[tuple[str, str]]) -> np.ndarray:
        pixels = _canvas_pixels(self.canvas)
        # The figure patch (white) and the images, what a full draw draws first.
        for channel in range(3):
            pixels[..., channel] = grid[..., channel]
        pixels[..., 3] = 255
        if self.lines._renderer is not self.canvas.get_renderer():
            self.lines = _LinesOnWhite(self.canvas.get_renderer())
        for artist, (text, colour) in zip(self.titles, titles, strict=True):
            artist.set_text(text)
            artist.set_color(colour)
            artist.draw(self.lines)
        return _rgb(pixels)


def render_predictions(
    images: np.ndarray,
    titles: Sequence[tuple[str, str]],
    *,
    dpi: int = 100,
    panel_inches: float = 2.0,
    columns: int = 4,
) -> np.ndarray:
    """The "predictions vs. actuals" grid: each image under its title.

    :param images: ``[N, C, H, W]`` with C 1 or 3, or ``[N, H, W]`` (numpy
        or a CPU tensor).
    :param titles: ``(text, colour)`` per image, as :func:`tbhooks_figures.prediction_titles` makes them.
    :param dpi: pixels per inch of the figure.
    :param panel_inches: the side of each image's square panel.
    :param columns: images per row.
    :returns: the figure's pixels, ``uint8`` ``[H, W, 3]``.

    The images are composed into one pixel grid (no Axes per panel, no
    resampling blur) that fills the canvas, and the titles are drawn over it;
    the figure with its titles is kept as a template for the next call with
    the same image count, dpi, panel size and columns.
    """
    rgb = _as_rgb_images(images)
    count = rgb.shape[0]
    if count == 0:
        raise ValueError("images is empty; pass at least one image")
    if len(titles) != count:
        raise ValueError(f"titles has {len(titles)} entries for {count} images")
    layout = _panel_layout(count, dpi, panel_inches, columns)
    grid = _panel_grid(rgb, layout)
    with _LOCK:
        template = _PREDICTION_TEMPLATES.get(layout)
        if template is None:
            template = _PanelTemplate(layout)
            _PREDICTION_TEMPLATES.put(layout, template)
        return template.draw(grid, titles)


# ---------------------------------------------------------------------------
# confusion matrix: glyphs of the cell counts
# ---------------------------------------------------------------------------

_DIGITS = "0123456789"
_SUBPIXELS = 64
"""Agg places glyphs in 1/64 pixel steps; glyphs are cached per step (of which the whole-pixel layout
uses two: 0 and 1/2)."""


def _matrix_fontsize() -> float:
    return min(10.0, max(5.0, _CELL_INCHES * 72 * 0.3))


@dataclass(frozen=True)
class _Number:
    """A number's glyphs merged into one coverage bitmap (when no two of them share a pixel).

    ``top``, ``left``: where the bitmap's first pixel is, from the canvas row
    of the anchor's whole pixel and the column of the first digit's.  When
    glyphs overlap, ``glyphs`` lists them ``(coverage, top, left)`` relative
    to that first pixel, to be blended one after the other as Agg does.
    """

    coverage: np.ndarray
    top: int
    left: int
    glyphs: tuple[tuple[np.ndarray, int, int], ...] = ()


class _Glyphs:
    """Digits as matplotlib draws them, one bitmap per digit, font size, dpi and sub-pixel offset.

    A glyph is drawn by matplotlib (a ``Text`` centred on its anchor, as the
    cell numbers are) in white on a transparent canvas: each pixel's alpha is
    then the glyph's coverage, exactly what Agg blends with the text colour
    when it draws the same glyph at the same offset into a figure.  Kept at
    most :attr:`limit` (a few dozen are used: ten digits at two offsets in x
    and y per font size and dpi).
    """

    limit = 2000

    def __init__(self) -> None:
        self._bitmaps: dict[tuple[float, int, str, int, int], tuple[np.ndarray, int, int]] = {}
        self._advances: dict[tuple[float, int], float | None] = {}
        self._numbers: dict[tuple[float, int, str, tuple[int, ...], int], _Number] = {}

    def clear(self) -> None:
        self._bitmaps.clear()
        self._numbers.clear()
        self._advances.clear()

    def advance(self, renderer: Any, fontsize: float, dpi: int) -> float | None:
        """Pixels from one digit to the next; ``None`` when digits differ in width or kern (then
        numbers are not cut into glyphs and each cell's number is drawn as a ``Text``)."""
        key = (fontsize, dpi)
        if key not in self._advances:
            prop = FontProperties(size=fontsize)
            widths = {renderer.get_text_width_height_descent(ch, prop, False)[:2] for ch in _DIGITS}
            whole = renderer.get_text_width_height_descent(_DIGITS, prop, False)[:2]
            advance = None
            if len(widths) == 1:
                ((width, height),) = widths
                if whole == (width * len(_DIGITS), height):
                    advance = width
            self._advances[key] = advance
        return self._advances[key]

    def get(self, fontsize: float, dpi: int, ch: str, qx: int, qy: int) -> tuple[np.ndarray, int, int]:
        """``(coverage, top, left)`` of digit ``ch`` centred at ``(X + qx/64, Y + qy/64)`` (display
        pixels, y up): its coverage's first row is row ``H - Y + top`` of a canvas ``H`` pixels high,
        its first column ``X + left``."""
        key = (fontsize, dpi, ch, qx, qy)
        glyph = self._bitmaps.get(key)
        if glyph is None:
            self.prepare(fontsize, dpi, [(ch, qx, qy)])
            glyph = self._bitmaps[key]
        return glyph

    def number(self, fontsize: float, dpi: int, text: str, x64: tuple[int, ...], qy: int) -> _Number:
        """The digits of ``text`` with anchors at ``x64[k] / 64`` pixels right of a whole pixel and
        ``qy / 64`` above one: bitmap and offsets as :meth:`get` gives them for one glyph."""
        key = (fontsize, dpi, text, x64, qy)
        number = self._numbers.get(key)
        if number is not None:
            return number
        self.prepare(fontsize, dpi, [(ch, x % _SUBPIXELS, qy) for ch, x in zip(text, x64, strict=True)])
        placed = []
        for ch, x in zip(text, x64, strict=True):
            coverage, top, left = self.get(fontsize, dpi, ch, x % _SUBPIXELS, qy)
            if coverage.size:
                placed.append((coverage, top, left + x // _SUBPIXELS))
        if not placed:
            number = _Number(np.zeros((0, 0), dtype=np.uint8), 0, 0)
            self._numbers[key] = number
            return number
        top = min(t for _, t, _ in placed)
        left = min(lft for _, _, lft in placed)
        bottom = max(t + c.shape[0] for c, t, _ in placed)
        right = max(lft + c.shape[1] for c, _, lft in placed)
        merged = np.zeros((bottom - top, right - left), dtype=np.uint8)
        used = np.zeros(merged.shape, dtype=np.int8)
        for coverage, t, lft in placed:
            merged[t - top : t - top + coverage.shape[0], lft - left : lft - left + coverage.shape[1]] |= coverage
            used[t - top : t - top + coverage.shape[0], lft - left : lft - left + coverage.shape[1]] += 1
        glyphs: tuple[tuple[np.ndarray, int, int], ...] = ()
        if used.max() > 1:  # boxes overlap: keep the glyphs apart
            glyphs = tuple((c, t - top, lft - left) for c, t, lft in placed)
        number = _Number(merged, top, left, glyphs)
        if len(self._numbers) >= self.limit:
            self._numbers.clear()
        self._numbers[key] = number
        return number

    def prepare(self, fontsize: float, dpi: int, wanted: Sequence[tuple[str, int, int]]) -> None:
        """Draw the glyphs in ``wanted`` not drawn yet, all in one scratch figure."""
        wanted = [item for item in dict.fromkeys(wanted) if (fontsize, dpi, *item) not in self._bitmaps]
        if not wanted:
            return
        if len(self._bitmaps) + len(wanted) > self.limit:
            self._bitmaps.clear()
        box = math.ceil(3 * fontsize / 72 * dpi) + 8  # room for one glyph around its anchor
        figure = Figure(
            figsize=(_whole_pixel_inches(box * len(wanted), dpi), _whole_pixel_inches(box, dpi)),
            dpi=dpi,
            facecolor="none",
        )
        anchor_x, anchor_y = box // 2, box // 2
        for index, (ch, qx, qy) in enumerate(wanted):
            figure.text(
                index * box + anchor_x + qx / _SUBPIXELS,
                anchor_y + qy / _SUBPIXELS,
                ch,
                transform=IdentityTransform(),
                fontsize=fontsize,
                color="white",
                ha="center",
                va="center",
            )
        canvas = FigureCanvasAgg(figure)
        canvas.draw()
        alpha = _canvas_pixels(canvas)[..., 3]
        for index, (ch, qx, qy) in enumerate(wanted):
            cell = alpha[:, index * box : (index + 1) * box]
            rows = np.flatnonzero(cell.any(axis=1))
            cols = np.flatnonzero(cell.any(axis=0))
            if rows.size == 0:  # too small to leave a trace (a few dpi)
                self._bitmaps[(fontsize, dpi, ch, qx, qy)] = (np.zeros((0, 0), dtype=np.uint8), 0, 0)
                continue
            if rows[0] == 0 or cols[0] == 0 or rows[-1] == box - 1 or cols[-1] == box - 1:
                raise RuntimeError(f"glyph {ch!r} at {fontsize} pt, {dpi} dpi does not fit its {box} px box")
            coverage = cell[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1].copy()
            # The anchor is at row box - anchor_y (canvas rows run down), column index * box + anchor_x.
            self._bitmaps[(fontsize, dpi, ch, qx, qy)] = (
                coverage,
                int(rows[0]) - (box - anchor_y),
                int(cols[0]) - anchor_x,
            )


_GLYPHS = _Glyphs()
_WHITE = np.array([255, 255, 255], dtype=np.int32)
_BLACK = np.array([0, 0, 0], dtype=np.int32)


# ---------------------------------------------------------------------------
# confusion matrix
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _MatrixLayout:
    """The confusion matrix's figure, in whole pixels (x from the left, y from the bottom)."""

    names: tuple[str, ...]
    dpi: int
    width: int
    height: int
    left: int
    bottom: int
    cell: int
    fontsize: float

    @property
    def classes(self) -> int:
        return len(self.names)


def _matrix_layout(names: list[str], dpi: int, figsize: tuple[float, float] | None) -> _MatrixLayout:
    """Margins from the longest name; the matrix square, centred in the space they leave, on whole pixels."""
    classes = len(names)
    fontsize = _matrix_fontsize()
    char = fontsize * 0.6 / 72  # rough width of one character, inches
    longest = max(len(n) for n in names) * char
    left = fontsize * 1.6 / 72 + longest + 0.15  # y label + tick labels
    bottom = fontsize * 1.6 / 72 + longest * 0.75 + 0.2  # x label + labels turned 45 degrees
    top, right = fontsize * 2.2 / 72 + 0.1, 0.2
    if figsize is None:
        side = max(2.4, _CELL_INCHES * classes)
        figsize = (left + side + right, bottom + side + top)
    inches_w, inches_h = figsize
    # Whole pixels, as many as the canvas of a figure of ``figsize`` has (it truncates).
    width, height = max(1, int(inches_w * dpi)), max(1, int(inches_h * dpi))
    # The space the margins leave, as fractions capped so that a tiny figure still has room for the matrix.
    x0, x1 = min(left / inches_w, 0.45) * width, (1 - min(right / inches_w, 0.05)) * width
    y0, y1 = min(bottom / inches_h, 0.45) * height, (1 - min(top / inches_h, 0.2)) * height
    cell = max(1, round(min(x1 - x0, y1 - y0) / classes))
    square = cell * classes
    return _MatrixLayout(
        names=tuple(names),
        dpi=dpi,
        width=width,
        height=height,
        left=round((x0 + x1 - square) / 2),
        bottom=round((y0 + y1 - square) / 2),
        cell=cell,
        fontsize=fontsize,
    )


def _matrix_figure(layout: _MatrixLayout) -> tuple[Figure, Axes, AxesImage]:
    """The confusion matrix's figure with everything but the data: axes, names, labels, an image to fill."""
    classes = layout.classes
    figure = Figure(
        figsize=(_whole_pixel_inches(layout.width, layout.dpi), _whole_pixel_inches(layout.height, layout.dpi)),
        dpi=layout.dpi,
    )
    square = layout.cell * classes
    axes = figure.add_axes(
        (layout.left / layout.width, layout.bottom / layout.height, square / layout.width, square / layout.height)
    )
    image = axes.imshow(np.zeros((classes, classes)), cmap="Blues", vmin=0, vmax=1, interpolation="nearest")
    fontsize = layout.fontsize
    axes.set_xticks(
        range(classes),
        layout.names,
        rotation=45,
        ha="right",
        rotation_mode="anchor",
        fontsize=fontsize,
        parse_math=False,
    )
    axes.set_yticks(range(classes), layout.names, fontsize=fontsize, parse_math=False)
    axes.set_xlabel("predicted", fontsize=fontsize)
    axes.set_ylabel("true", fontsize=fontsize)
    # A title like the real ones: where a full draw puts the title depends on its text's extent.
    axes.set_title(_matrix_summary(np.zeros((1, 1), dtype=np.int64))[1], fontsize=fontsize)
    return figure, axes, image


def _matrix_summary(counts: np.ndarray) -> tuple[int, str]:
    """The colour scale's top and the title."""
    total = int(counts.sum())
    accuracy = float(np.trace(counts)) / total if total else 0.0
    return max(int(counts.max()), 1), f"{total} samples, accuracy {accuracy:.1%}"


class _MatrixTemplate:
    """A drawn confusion-matrix figure of one layout, to draw the next matrices of that layout into.

    Kept: the canvas pixels of everything but the image, the cell numbers and
    the title (``static``), the image's pixel rectangle, and the artists a full
    draw puts over the image after it (the tick marks and the frame, which
    reach over its edge).  A figure is then: ``static``; the image; those
    artists, whose pixels outside the image are then put back to ``static``
    (there they are drawn once already); the numbers; the title.
    """

    def __init__(self, layout: _MatrixLayout) -> None:
        self.layout = layout
        self.figure, self.axes, self.image = _matrix_figure(layout)
        self.canvas = FigureCanvasAgg(self.figure)
        # Everything that does not depend on the data, laid out once.  The title is drawn clear, not
        # hidden: a hidden title has no extent, and the full draw would move it to make room for it.
        self.image.set_visible(False)
        self.axes.title.set_alpha(0.0)
        self.canvas.draw()
        self.image.set_visible(True)
        self.axes.title.set_alpha(None)
        self.static = _canvas_pixels(self.canvas).copy()
        height = layout.height
        square = layout.cell * layout.classes
        # The image's pixels: rows counted from the top of the canvas.
        self.rows = slice(height - layout.bottom - square, height - layout.bottom)
        self.cols = slice(layout.left, layout.left + square)
        # Drawn after the image in a full draw and reaching into it (a pixel's margin): the frame, and the
        # tick marks that start on it.  Axes.draw draws its children by zorder, in a stable sort of
        # spines, then axes; an axis draws its ticks' lines in turn.
        renderer = self.canvas.get_renderer()
        groups: list[tuple[float, list[Artist]]] = [
            (spine.get_zorder(), [spine]) for spine in self.axes.spines.values()
        ]
        for axis in (self.axes.xaxis, self.axes.yaxis):
            lines: list[Artist] = []
            for tick in axis.get_major_ticks(len(axis.get_majorticklocs())):
                lines += [tick.gridline, tick.tick1line, tick.tick2line]
            groups.append((axis.get_zorder(), lines))
        groups.sort(key=lambda group: group[0])
        candidates = [artist for _, artists in groups for artist in artists]
        x0, y0 = layout.left - 1, layout.bottom - 1
        x1, y1 = layout.left + square + 1, layout.bottom + square + 1
        self.over = []
        for artist in candidates:
            if artist.get_visible():
                box = artist.get_window_extent(renderer)
                if box.x0 <= x1 and box.x1 >= x0 and box.y0 <= y1 and box.y1 >= y0:
                    self.over.append(artist)
        # Cell centres in display pixels (y up); whole or half pixels by the layout.
        to_display = self.axes.transData
        self.centre_x = [to_display.transform((col, 0))[0] for col in range(layout.classes)]
        self.centre_y = [to_display.transform((0, row))[1] for row in range(layout.classes)]
        self.cell_texts: list[Text] = []  # for numbers that are not plain digits (negative counts)
        self.fill = self._fill_matches_the_image()

    def _filled(self, counts: np.ndarray, peak: int) -> np.ndarray:
        """The image's pixels by numpy: each cell's colour from the image's colour map (``uint8`` RGBA),
        repeated over the cell's square of whole pixels."""
        cells = self.image.cmap(np.clip(counts / peak, 0.0, 1.0), bytes=True)
        cell = self.layout.cell
        return np.repeat(np.repeat(cells, cell, axis=0), cell, axis=1)

    def _paint(self, counts: np.ndarray, peak: int, renderer: Any, pixels: np.ndarray) -> None:
        """The matrix's cells onto ``pixels``: filled with numpy where that is what the image draws
        (every cell whole pixels, checked once per template), else by the image itself.

        The image's own draw resamples the matrix to the screen (about 9 ms at
        10 classes and 100 dpi, a third of the figure); filling each cell's
        square with its colour takes well under a millisecond.
        """
        if not self.fill:
            self.image.set_data(counts)
            self.image.set_clim(0, peak)
            self.image.draw(renderer)
            return
        pixels[self.rows, self.cols] = self._filled(counts, peak)

    def _fill_matches_the_image(self) -> bool:
        """Whether filling cells gives exactly the pixels the image draws, on a matrix of every colour."""
        classes = self.layout.classes
        if classes * classes < 2:
            return False
        probe = np.arange(classes * classes, dtype=np.int64).reshape(classes, classes) * 255 // (classes * classes - 1)
        peak = max(int(probe.max()), 1)
        renderer = self.canvas.get_renderer()
        pixels = _canvas_pixels(self.canvas)
        pixels[...] = self.static
        self.image.set_data(probe)
        self.image.set_clim(0, peak)
        self.image.draw(renderer)
        drawn = pixels[self.rows, self.cols].copy()
        pixels[...] = self.static
        filled = self._filled(probe, peak)
        return drawn.shape == filled.shape and bool(np.array_equal(drawn, filled))

    def draw(self, counts: np.ndarray) -> np.ndarray:
        renderer = self.canvas.get_renderer()
        pixels = _canvas_pixels(self.canvas)
        pixels[...] = self.static
        peak, title = _matrix_summary(counts)
        self._paint(counts, peak, renderer, pixels)
        for artist in self.over:
            artist.draw(renderer)
        # Outside the image those artists are in ``static`` already: drawn twice they would be darker.
        rows, cols = self.rows, self.cols
        pixels[: rows.start] = self.static[: rows.start]
        pixels[rows.stop :] = self.static[rows.stop :]
        pixels[rows, : cols.start] = self.static[rows, : cols.start]
        pixels[rows, cols.stop :] = self.static[rows, cols.stop :]
        self._draw_numbers(counts, renderer, pixels)
        self.axes.title.set_text(title)
        self.axes.title.draw(_text_renderer(renderer))
        return _rgb(pixels)

    def _draw_numbers(self, counts: np.ndarray, renderer: Any, pixels: np.ndarray) -> None:
        """Each cell's count, centred, white on dark cells, as a full draw draws the cell texts.

        Usually every number lies inside its own cell: then no two cells share
        a pixel, the order of drawing does not matter, and the glyphs of each
        colour are gathered into one coverage layer and blended in one step.
        Otherwise (numbers wider than their cells, negative counts) they are
        drawn one by one in the order of a full draw (row by row), so that
        overlapping numbers overlap the same way.
        """
        layout = self.layout
        advance = _GLYPHS.advance(renderer, layout.fontsize, layout.dpi)
        half = int(counts.max()) / 2
        texts = [[str(int(value)) for value in row] for row in counts.tolist()]
        if advance is None or not all(text.isdigit() for row in texts for text in row):
            self._draw_numbers_in_order(counts, texts, renderer, pixels, half)
            return
        height = pixels.shape[0]
        cell, square = layout.cell, layout.cell * layout.classes
        top_r, left_r = self.rows.start, self.cols.start
        layers = {True: np.zeros((square, square), dtype=np.uint8), False: np.zeros((square, square), dtype=np.uint8)}
        overlapping: list[tuple[_Number, int, int, bool]] = []
        for row in range(layout.classes):
            for col in range(layout.classes):
                number, top, left = self._number(texts[row][col], row, col, advance, height)
                # Inside the cell?  (Relative to the image's first pixel.)
                top -= top_r
                left -= left_r
                cell_top, cell_left = row * cell, col * cell
                if not (
                    cell_top <= top
                    and top + number.coverage.shape[0] <= cell_top + cell
                    and cell_left <= left
                    and left + number.coverage.shape[1] <= cell_left + cell
                ):
                    self._draw_numbers_in_order(counts, texts, renderer, pixels, half)
                    return
                white = int(counts[row, col]) > half
                if number.glyphs:  # its glyphs overlap one another: blended one by one, below
                    overlapping.append((number, top + top_r, left + left_r, white))
                else:
                    layer = layers[white]
                    layer[top : top + number.coverage.shape[0], left : left + number.coverage.shape[1]] = (
                        number.coverage
                    )
        for white, layer in layers.items():
            flat = np.flatnonzero(layer)
            if flat.size:
                rows, cols = np.divmod(flat, square)
                rows += top_r
                cols += left_r
                picked = pixels[rows, cols]
                _blend(picked, layer.ravel()[flat], _WHITE if white else _BLACK)
                pixels[rows, cols] = picked
        for number, top, left, white in overlapping:
            for coverage, glyph_top, glyph_left in number.glyphs:
                _blend_clipped(pixels, coverage, top + glyph_top, left + glyph_left, _WHITE if white else _BLACK)

    def _number(self, text: str, row: int, col: int, advance: float, height: int) -> tuple[_Number, int, int]:
        """Cell ``(row, col)``'s number and the canvas row and column of its coverage's first pixel.

        Digit k of the number sits where a one-digit text centred there would
        (digits all have the same advance and no kerning, as
        :meth:`_Glyphs.advance` checked).
        """
        start = self.centre_x[col] - advance * (len(text) - 1) / 2
        x64 = [round((start + index * advance) * _SUBPIXELS) for index in range(len(text))]
        x_whole = x64[0] // _SUBPIXELS
        y_whole, qy = divmod(round(self.centre_y[row] * _SUBPIXELS), _SUBPIXELS)
        number = _GLYPHS.number(
            self.layout.fontsize, self.layout.dpi, text, tuple(x - x_whole * _SUBPIXELS for x in x64), qy
        )
        return number, height - y_whole + number.top, x_whole + number.left

    def _draw_numbers_in_order(
        self, counts: np.ndarray, texts: list[list[str]], renderer: Any, pixels: np.ndarray, half: float
    ) -> None:
        """The cell numbers one by one, row by row: glyphs where they can be, ``Text`` where not."""
        layout = self.layout
        advance = _GLYPHS.advance(renderer, layout.fontsize, layout.dpi)
        height = pixels.shape[0]
        extra = 0
        for row in range(layout.classes):
            for col in range(layout.classes):
                text = texts[row][col]
                white = int(counts[row, col]) > half
                if advance is None or not text.isdigit():
                    extra = self._draw_text(extra, row, col, text, "white" if white else "black", renderer)
                    continue
                number, top, left = self._number(text, row, col, advance, height)
                for coverage, glyph_top, glyph_left in number.glyphs or [(number.coverage, 0, 0)]:
                    _blend_clipped(pixels, coverage, top + glyph_top, left + glyph_left, _WHITE if white else _BLACK)
        for unused in self.cell_texts[extra:]:
            unused.set_visible(False)

    def _draw_text(self, index: int, row: int, col: int, text: str, colour: str, renderer: Any) -> int:
        """Draw one cell's number as a matplotlib ``Text`` (kept for reuse); returns the next free index."""
        if index == len(self.cell_texts):
            self.cell_texts.append(
                self.axes.text(0, 0, "", ha="center", va="center", fontsize=self.layout.fontsize, visible=False)
            )
        artist = self.cell_texts[index]
        artist.set_position((col, row))
        artist.set_text(text)
        artist.set_color(colour)
        artist.set_visible(True)
        artist.draw(_text_renderer(renderer))
        return index + 1


def _blend_clipped(pixels: np.ndarray, coverage: np.ndarray, top: int, left: int, colour: np.ndarray) -> None:
    """:func:`_blend` of a glyph whose first pixel is at ``(top, left)``, cut to the canvas."""
    height, width = pixels.shape[:2]
    bottom, right = top + coverage.shape[0], left + coverage.shape[1]
    if top >= height or left >= width or bottom <= 0 or right <= 0:
        return
    cut = coverage[
        max(0, -top) : coverage.shape[0] - max(0, bottom - height),
        max(0, -left) : coverage.shape[1] - max(0, right - width),
    ]
    _blend(pixels[max(0, top) : min(bottom, height), max(0, left) : min(right, width)], cut, colour)


def render_confusion_matrix(
    counts: np.ndarray,
    class_names: Sequence[str],
    *,
    dpi: int = 100,
    figsize: tuple[float, float] | None = None,
) -> np.ndarray:
    """The confusion matrix: true class down, predicted class across, the count in each cell.

    :param counts: ``[C, C]`` integer counts, row = true label, column =
        predicted class (as :func:`tbhooks_figures.confusion_counts` makes them).
    :param class_names: ``C`` names for the axes.
    :param dpi: pixels per inch of the figure.
    :param figsize: ``(width, height)`` in inches (rounded to whole pixels); by
        default about half an inch per class plus room for the names.
    :returns: the figure's pixels, ``uint8`` ``[H, W, 3]``.

    The title gives the number of samples and the accuracy (the diagonal's
    share).  Cell text is white on dark cells and black on light ones.  The
    figure of a layout (names, dpi, size) is kept as a template for the next
    call with the same layout.
    """
    counts = np.asarray(counts)
    if counts.ndim != 2 or counts.shape[0] != counts.shape[1] or counts.shape[0] == 0:
        raise ValueError(f"counts expects a square [C, C] matrix, got shape {list(counts.shape)}")
    classes = counts.shape[0]
    if len(class_names) != classes:
        raise ValueError(f"class_names has {len(class_names)} names for {classes} classes")
    layout = _matrix_layout([_short(str(name)) for name in class_names], dpi, figsize)
    with _LOCK:
        template = _MATRIX_TEMPLATES.get(layout)
        if template is None:
            template = _MatrixTemplate(layout)
            _MATRIX_TEMPLATES.put(layout, template)
        return template.draw(counts.astype(np.int64))
