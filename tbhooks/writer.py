"""The run's one writer: a ``SummaryWriter`` on global rank 0 (one event stream per run), a no-op elsewhere."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from torch.utils.tensorboard import SummaryWriter

MAX_QUEUE = 256
"""Events queued before an ``add_*`` call waits for the disk (SummaryWriter's default, 10, is soon full)."""


def distributed_rank() -> tuple[int, int]:
    """``(global rank, world size)`` from ``torch.distributed``, else from torchrun's ``RANK``/``WORLD_SIZE``."""
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


class NullWriter:
    """The writer of ranks other than 0: accepts every ``SummaryWriter`` call and writes nothing."""

    def __init__(self, logdir: str) -> None:
        self.log_dir = logdir
        self.file_writer = _NullFileWriter()

    def get_logdir(self) -> str:
        return self.log_dir

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass

    def _ignore(self, *args: Any, **kwargs: Any) -> None:
        pass

    add_scalar = add_scalars = add_histogram = add_histogram_raw = add_image = add_images = _ignore
    add_figure = add_text = add_graph = add_embedding = add_pr_curve = add_pr_curve_raw = _ignore
    add_hparams = add_custom_scalars = add_mesh = add_audio = add_video = _ignore


class _NullFileWriter:
    """``NullWriter.file_writer``: the two calls plugins make on a ``SummaryWriter``'s file writer."""

    add_summary = add_event = NullWriter._ignore


def check_logdir(logdir: str | os.PathLike[str]) -> Path:
    """Create ``logdir`` and prove it writable before any training (else a ``ValueError`` naming it)."""
    if not isinstance(logdir, (str, os.PathLike)):
        raise TypeError(f"logdir expects a path (str or os.PathLike), got {type(logdir).__name__}")
    path = Path(logdir)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as exc:
        raise ValueError(f"logdir={str(path)!r} cannot be written: {exc.strerror or exc}") from None
    return path


def open_writer(logdir: Path, *, rank: int, flush_secs: float, start_step: int) -> SummaryWriter:
    """A real ``SummaryWriter`` on rank 0, a :class:`NullWriter` elsewhere; a resumed run (``start_step``)
    opens it with ``purge_step``, so TensorBoard drops what a crashed run wrote after the checkpoint."""
    if rank != 0:
        return NullWriter(str(logdir))  # type: ignore[return-value]
    from torch.utils.tensorboard import SummaryWriter

    purge = start_step + 1 if start_step else None
    return SummaryWriter(log_dir=str(logdir), max_queue=MAX_QUEUE, flush_secs=flush_secs, purge_step=purge)
