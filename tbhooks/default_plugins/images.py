"""Images: a grid of input images, built on their device; only the uint8 grid is copied to the CPU, and
``SummaryWriter.add_image`` (PNG encoding) runs on the run's background thread.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tbhooks.default_plugins.common import check_floats, check_int, image_batch, to_uint8, to_unit
from tbhooks.markers import hookimpl

if TYPE_CHECKING:
    import torch

    from tbhooks.run import Run

TAG = "images/inputs"


class Images:
    """Log a grid of input images (``torchvision.utils.make_grid``) under ``images/inputs`` (IMAGES dashboard).

    At ``on_batch_end`` of the first batch of every fit and, with ``every_n_epochs=N``, of epochs 0, N, 2N, ...,
    on rank 0, at that batch's step.  Inputs must be float or uint8 ``[N, C, H, W]`` with 1 or 3 channels or
    ``[N, H, W]``; others are skipped with one INFO line on the ``tbhooks`` logger.

    :param max_images: how many images of the batch the grid shows (default 16).
    :param every_n_epochs: also log a grid every N epochs; 0 (default) logs only at fit start.
    :param mean: per-channel means (one value for all channels) the float inputs were normalised with, to undo
        it (``x * std + mean``, then clamped to ``[0, 1]``); ``None`` (default) for none.
    :param std: per-channel standard deviations, likewise (default ``None``).
    :param nrow: images per grid row (default 8).
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
        self._due_step = 0

    def batch_end_due(self, step: int) -> bool:
        """The schedule: the one step chosen at fit start or at the start of a logged epoch."""
        return step == self._due_step

    @hookimpl
    def on_fit_start(self, run: Run) -> None:
        self._due_step = run.step + 1  # the fit's first batch

    @hookimpl
    def on_epoch_start(self, step: int, epoch: int) -> None:
        if self.every_n_epochs and epoch % self.every_n_epochs == 0:
            self._due_step = step + 1

    @hookimpl
    def on_batch_end(self, run: Run, step: int, inputs: Any) -> None:
        if not run.is_writer:
            return
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
        run.submit(self._write, run, to_uint8(make_grid(unit, nrow=self.nrow)).cpu(), step)

    def _write(self, run: Run, grid: torch.Tensor, step: int) -> None:
        run.writer.add_image(TAG, grid, step)
