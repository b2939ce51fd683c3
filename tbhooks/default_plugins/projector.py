"""The projector's files, laid out as ``SummaryWriter.add_embedding`` writes them, through TensorBoard's protobuf.

``add_embedding`` formats features one ``.item()`` at a time, overwrites (and prints about) an existing
``<step:05d>/<tag>`` directory, rebuilds ``projector_config.pbtxt`` from the writer's memory (dropping earlier
runs' embeddings) and writes labels unescaped.  Here rows are formatted at once, the caller picks a free tag, the
existing config is extended, and every label goes through :func:`tsv_label`.
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

    Tabs, newlines and carriage returns become ``\\t``, ``\\n``, ``\\r``; other control characters, line or
    paragraph separators and lone surrogates become ``\\xNN`` or ``\\uNNNN``.  A label that would be blank (the
    projector skips those, shifting later labels onto the wrong points) is written as its ``repr``.
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

    The directory ``<step:05d>/<encoded tag>`` must not exist yet; the existing config is extended, so
    embeddings of earlier runs in the same log directory stay listed.
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
