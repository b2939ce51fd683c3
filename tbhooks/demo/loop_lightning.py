"""The demo's training through Lightning, with :class:`tbhooks.integrations.lightning.TbhooksCallback`.

Lightning is imported only when it runs, so the demo imports without it.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any

from torch import nn

if TYPE_CHECKING:
    from pathlib import Path

    import torch
    from torch.utils.data import DataLoader


def lightning_module(model: nn.Module, optimizer: torch.optim.Optimizer) -> nn.Module:
    """A LightningModule that trains ``model`` with ``optimizer`` and cross-entropy.

    The network's layers become its own children, so per-layer tags read ``conv1`` as in the other loops.
    """
    from tbhooks.integrations.lightning import pl

    class TutorialModule(pl.LightningModule):  # type: ignore[misc,name-defined]
        def __init__(self) -> None:
            super().__init__()
            for name, child in model.named_children():
                self.add_module(name, child)
            self.network_forward = model.forward  # a bound method: not a submodule, the layers are shared

        def forward(self, inputs: torch.Tensor) -> torch.Tensor:
            return self.network_forward(inputs)

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            inputs, targets = batch
            return nn.functional.cross_entropy(self(inputs), targets)

        def validation_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            inputs, targets = batch
            return nn.functional.cross_entropy(self(inputs), targets)  # the loss: eval/loss

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return optimizer

    return TutorialModule()


def fit_lightning(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    train_loader: DataLoader,
    test_loader: DataLoader,
    *,
    epochs: int,
    logdir: str | Path,
    device: torch.device,
    **options: Any,
) -> dict[str, float]:
    """Train with a Lightning ``Trainer`` and :class:`TbhooksCallback`; ``options`` go to the callback.

    tbhooks writes the only logs; the values agree with the other loops' in the first epoch only, as
    Lightning draws a shuffled loader's order differently from the second on.
    """
    from tbhooks.integrations.lightning import TbhooksCallback, pl

    callback = TbhooksCallback(logdir=logdir, **options)
    accelerator = "gpu" if device.type == "cuda" else device.type
    trainer = pl.Trainer(
        accelerator=accelerator,
        devices=[device.index or 0] if accelerator == "gpu" else 1,
        max_epochs=epochs,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        callbacks=[callback],
    )
    with warnings.catch_warnings():
        # Lightning's advice for file-backed data sets; the demo's loaders hold in-memory tensors.
        warnings.filterwarnings("ignore", message=r"The '\w+' does not have many workers")
        # The demo trains on the device it was given (--device), also where a GPU is idle.
        warnings.filterwarnings("ignore", message="GPU available but not used")
        # Lightning 2.6 calls a torch API that newer torch deprecates; nothing a user of the demo can change.
        warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)`", category=FutureWarning)
        trainer.fit(lightning_module(model, optimizer), train_loader, test_loader)
    return dict(callback.hooks.last_metrics) if callback.hooks is not None else {}
