"""Images: a grid of the input images at fit start and, optionally, every N epochs.

Tag ``images/inputs`` (the IMAGES dashboard), at the global step of the
batch the grid shows.  The grid is built on the inputs' device; only the
uint8 grid is copied to the CPU, on the step that logs, and the PNG encoding
runs on the run's background thread.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tbhooks._records import summary_event, write_event
from tbhooks.default_plugins._images import check_floats, image_batch, to_uint8, to_unit
from tbhooks.default_plugins._options import check_int
from tbhooks.markers import hookimpl
from tbhooks.render_worker import image_summary

if TYPE_CHECKING:
    import torch

    from tbhooks.run import Run

TAG = "images/inputs"


class Images:
    """Log a grid of input images (``torchvision.utils.make_grid``).

    Fires on the first training batch of every fit (``on_batch_end``) and,
    with ``every_n_epochs=N``, at the end of every N-th epoch with the
    inputs of that epoch's last batch.  Only rank 0 does any work.

    :param max_images: how many images of the batch the grid shows (default 16).
    :param every_n_epochs: also log a grid every N epochs; 0 (default) logs
        only at fit start.
    :param mean: per-channel means the inputs were normalised with, to undo
        it (``x * std + mean``); ``None`` (default) for none.  One value
        applies to every channel.
    :param std: per-channel standard deviations, likewise (default ``None``).
    :param nrow: images per grid row (default 8).

    Inputs must be ``[N, C, H, W]`` with 1 or 3 channels or ``[N, H, W]``;
    float images are un-normalised and clamped to ``[0, 1]``, uint8 images
    are shown as they are.  Other inputs (dicts, feature vectors, other
    channel counts) are skipped with one INFO line on the ``tbhooks`` logger.

    Tag: ``images/inputs`` (IMAGES dashboard), at the global step.
    """

    name = "images"

    def __init__(
        self,
        max_images: int = 16,
        every_n_epochs: int = 0,
        mean: Any = None,
        std: Any = None,
        nrow: int = 8,
    ) -> None:
        self.max_images = check_int("Images", "max_images", max_images, minimum=1)
        self.every_n_epochs = check_int("Images", "every_n_epochs", every_n_epochs, minimum=0)
        self.mean = check_floats("Images", "mean", mean)
        self.std = check_floats("Images", "std", std, positive=True)
        self.nrow = check_int("Images", "nrow", nrow, minimum=1)
        self._started = False

    def _due(self, epoch: int) -> bool:
        return self.every_n_epochs > 0 and (epoch + 1) % self.every_n_epochs == 0

    def batch_end_due(self, step: int) -> bool:
        """The core's fast path: only the first batch of a fit is needed (epoch grids use ``run.last_inputs``)."""
        return not self._started

    @hookimpl
    def on_fit_start(self) -> None:
        self._started = False

    @hookimpl
    def on_batch_end(self, run: Run, step: int, inputs: Any) -> None:
        if self._started:
            return
        self._started = True
        if run.is_writer:
            self._log(run, inputs, step)

    @hookimpl
    def on_epoch_end(self, run: Run, step: int, epoch: int) -> None:
        # The core keeps a reference to the latest batch: no copy and no sync on the steps that do not log.
        last = run.last_inputs
        if run.is_writer and last is not None and self._due(epoch):
            self._log(run, last, step)

    def _log(self, run: Run, inputs: Any, step: int) -> None:
        images = image_batch(inputs)
        if images is None:
            described = (
                f"a tensor of shape {list(inputs.shape)} and dtype {inputs.dtype}"
                if hasattr(inputs, "shape") and hasattr(inputs, "dtype")
                else f"a {type(inputs).__name__}"
            )
            run.info_once(
                "images:not-images",
                f"tbhooks: images skipped: the inputs are {described}, not images "
                f"[N, C, H, W] with 1 or 3 channels or [N, H, W] (float or uint8)",
            )
            return
        from torchvision.utils import make_grid

        unit = to_unit(images[: self.max_images].detach(), self.mean, self.std, run=run, who="images")
        grid = make_grid(unit, nrow=self.nrow)
        run.submit(self._write, run, to_uint8(grid).cpu(), step)

    def _write(self, run: Run, grid: torch.Tensor, step: int) -> None:
        # What add_image(TAG, grid, step) writes, with the PNG encoded by the render worker's encoder
        # (no row filters, zlib level 1): PIL's took most of this background task's time, which
        # holds the GIL while training runs.
        pixels = grid.permute(1, 2, 0).contiguous().numpy()  # [C, H, W] -> [H, W, C]
        write_event(run.writer, summary_event(image_summary(pixels, TAG), step))
