"""The plugins the demo runs: the built-ins sized for its small data, and a progress printer."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

from tbhooks.demo.data import MEAN, STD
from tbhooks.markers import hookimpl

if TYPE_CHECKING:
    from collections.abc import Mapping

    from tbhooks.run import Run

FIGURES_PLUGIN = "figures"
"""The entry-point name of the ``tbhooks-figures`` distribution."""
NET_ACTIVATIONS = ("conv1", "conv2", "fc1", "fc2", "fc3")
"""The tutorial network's layers, whose outputs the histograms show."""
TEXT_ACTIVATIONS = ("bert.encoder.layer.0", "bert.encoder.layer.1", "classifier")
"""The tiny BERT's layers (``--loop transformers``), likewise."""


def demo_plugins(steps_per_epoch: int, epochs: int, activations: tuple[str, ...] = NET_ACTIVATIONS) -> list[object]:
    """The built-ins configured for the demo's small data (each replaces its default by name).

    The intervals follow the epoch length, so a short run still fills every dashboard; the other
    built-ins keep their defaults, and installed distributions come through their entry points.
    """
    from tbhooks.default_plugins.embeddings import Embeddings
    from tbhooks.default_plugins.histograms import Histograms
    from tbhooks.default_plugins.images import Images
    from tbhooks.default_plugins.scalars import Scalars

    return [
        Scalars(every_n_steps=max(1, steps_per_epoch // 5)),
        # (MEAN,)/(STD,) undo the normalisation, so the images look like the digits.
        Images(mean=(MEAN,), std=(STD,)),
        # Activations of every layer, captured by module hooks on the logging steps only.
        Histograms(every_n_steps=max(1, steps_per_epoch // 2), activations=list(activations)),
        # The 84 features fc3 reads, of up to 1000 test images, with the images as sprites.
        Embeddings(every_n_evals=epochs, mean=(MEAN,), std=(STD,)),
    ]


class EpochPrinter:
    """Prints one line per epoch (training loss, test metrics); no ``on_batch_end``, no TensorBoard output."""

    name = "demo_progress"

    def __init__(self, epochs: int, stream: Any = None) -> None:
        self.epochs = epochs
        self.stream = stream
        self._train_loss: float | None = None

    @hookimpl
    def on_epoch_end(self, metrics: Mapping[str, float]) -> None:
        """Keep the epoch's mean training loss for the line printed after its evaluation."""
        self._train_loss = metrics.get("loss")

    @hookimpl
    def on_eval(self, run: Run, epoch: int, metrics: Mapping[str, float]) -> None:
        """Print the epoch's line (on the writing rank only, so torchrun prints it once)."""
        if not run.is_writer:
            return
        parts = [f"epoch {epoch + 1}/{self.epochs}"]
        if self._train_loss is not None:
            parts.append(f"train loss {self._train_loss:.4f}")
        parts += [f"test {name} {value:.4f}" for name, value in metrics.items()]
        print("  ".join(parts), file=self.stream or sys.stdout, flush=True)


def installed_plugin_names() -> list[str]:
    """The entry-point names of the installed plugin distributions (group ``tbhooks``)."""
    from importlib.metadata import entry_points

    from tbhooks.markers import NAME

    return sorted(ep.name for ep in entry_points(group=NAME))
