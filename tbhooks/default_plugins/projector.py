"""The projector's files: what ``SummaryWriter.add_embedding`` writes, through TensorBoard's public protobuf.

``add_embedding`` formats the features one ``.item()`` at a time (a call per
value, on a thread that shares the interpreter lock with training) and keeps
the projector's config in the writer's memory only.  Its sharp edges, and
what this module does about each:

* files go to ``<logdir>/<step:05d>/<tag with / as %2f>/`` (``tensors.tsv``,
  ``metadata.tsv``, ``sprite.png``) and ``<logdir>/projector_config.pbtxt``
  lists every embedding.  When that directory exists ``add_embedding``
  *prints* a warning to stdout and overwrites the files: the tag here
  carries the step, and a tag already on disk gets a ``_2``, ``_3``...
  suffix, so an embedding never overwrites another.
* the config is rebuilt from memory held by the writer, so a second run on
  the same log directory would drop the first run's embeddings from it; here
  the existing file is read, extended and written again.
* ``metadata.tsv`` is the labels joined by newlines, unescaped: a tab turns
  the first line into a header, a newline or a carriage return splits a
  point in two, and a blank label is skipped by the projector's parser, so
  every label goes through :func:`tsv_label`.
* the sprite is laid out ``ceil(sqrt(N))`` thumbnails a row in a square
  canvas as wide as that row (taller thumbnails do not fit); the projector
  refuses sprites over 8192 px a side.  Thumbnails are padded square and
  downscaled to fit.  (``add_embedding`` wants floats in ``[0, 1]`` and
  truncates ``x * 255``; the thumbnails here are ``uint8`` already and
  written as they are.)
* the projector's parser refuses vectors of dimension 1 and non-numeric
  values (``nan``); such embeddings are skipped with an INFO line.
"""

from __future__ import annotations

import io
import math
import os
import unicodedata

import numpy as np

_ESCAPES = {"\t": "\\t", "\n": "\\n", "\r": "\\r"}


def tsv_label(value: object) -> str:
    """``value`` as one safe cell of the projector's single-column ``metadata.tsv``.

    Tabs, newlines and carriage returns become the two characters ``\\t``,
    ``\\n``, ``\\r``; other control characters, line/paragraph separators and
    lone surrogates (which cannot be written as UTF-8) become ``\\xNN`` or
    ``\\uNNNN``.  Printable unicode is kept as is (the file is UTF-8).  A
    label that would be blank, which the projector skips (shifting every
    later label onto the wrong point), is written as its ``repr``.
    """
    text = str(value)
    out: list[str] = []
    for char in text:
        if char in _ESCAPES:
            out.append(_ESCAPES[char])
        elif unicodedata.category(char) in ("Cc", "Zl", "Zp", "Cs"):
            code = ord(char)
            out.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")
        else:
            out.append(char)
    label = "".join(out)
    return label if label.strip() else repr(text)


def encode_tag(tag: str) -> str:
    """A tag as a directory name, as ``SummaryWriter`` encodes it (``%``, ``/`` and ``\\`` escaped)."""
    return tag.replace("%", "%25").replace("/", "%2f").replace("\\", "%5c")


def write_projector_files(
    logdir: str, features: np.ndarray, metadata: list[str] | None, sprite: np.ndarray | None, step: int, tag: str
) -> None:
    """Write one embedding as ``SummaryWriter.add_embedding`` lays it out, and list it in the projector's config.

    :param features: ``[N, D]`` float32 points.
    :param metadata: ``N`` labels (one column, already made safe by :func:`tsv_label`), or ``None``.
    :param sprite: ``[N, C, S, S]`` ``uint8`` thumbnails (C 1 or 3), or ``None``.

    Runs on the background thread.  The directory ``<step:05d>/<encoded tag>``
    must not exist yet (the caller picks a free tag).  The config file is
    read, extended and written again, so embeddings of earlier runs in the
    same directory stay listed.
    """
    from google.protobuf import text_format
    from tensorboard.plugins.projector.projector_config_pb2 import EmbeddingInfo, ProjectorConfig

    subdir = f"{step:05d}/{encode_tag(tag)}"
    os.makedirs(os.path.join(logdir, subdir))
    info = EmbeddingInfo(tensor_name=f"{tag}:{step:05d}", tensor_path=f"{subdir}/tensors.tsv")
    # One formatting operation a row; %.9g gives every float32 back exactly.
    row = "\t".join(["%.9g"] * features.shape[1]) + "\n"
    _write_file(logdir, info.tensor_path, "".join(row % tuple(values) for values in features.tolist()).encode())
    if metadata is not None:
        info.metadata_path = f"{subdir}/metadata.tsv"
        _write_file(logdir, info.metadata_path, ("\n".join(metadata) + "\n").encode("utf-8"))
    if sprite is not None:
        info.sprite.image_path = f"{subdir}/sprite.png"
        info.sprite.single_image_dim.extend([sprite.shape[3], sprite.shape[2]])
        _write_file(logdir, info.sprite.image_path, sprite_png(sprite))
    config = ProjectorConfig()
    path = os.path.join(logdir, "projector_config.pbtxt")
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as handle:
            text_format.Parse(handle.read(), config)
    config.embeddings.append(info)
    _write_file(logdir, "projector_config.pbtxt", text_format.MessageToString(config).encode())


def sprite_png(thumbnails: np.ndarray) -> bytes:
    """``[N, C, S, S]`` uint8 thumbnails as one PNG, laid out as the projector reads a sprite:
    ``ceil(sqrt(N))`` a row in a square canvas (black where no thumbnail is)."""
    from PIL import Image

    count, _, height, width = thumbnails.shape
    per_row = math.ceil(count**0.5)
    canvas = np.zeros((per_row * height, per_row * width, 3), dtype=np.uint8)
    for index in range(count):
        top, left = divmod(index, per_row)
        # [C, S, S] -> [S, S, C]; one channel broadcasts to three.
        cell = thumbnails[index].transpose(1, 2, 0)
        canvas[top * height : (top + 1) * height, left * width : (left + 1) * width] = cell
    buffer = io.BytesIO()
    Image.fromarray(canvas).save(buffer, format="PNG")
    return buffer.getvalue()


def _write_file(logdir: str, relative: str, data: bytes) -> None:
    with open(os.path.join(logdir, relative), "wb") as handle:
        handle.write(data)
