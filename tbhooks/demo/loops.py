"""The ways the demo can train, as a table ``--loop`` name -> fit function (:data:`LOOPS`).

Every fit function takes the same arguments (:class:`FitLoop`) and returns the last evaluation's metrics.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

import torch
from torch import nn

if TYPE_CHECKING:
    from pathlib import Path

    from torch.utils.data import DataLoader

LEARNING_RATE = 1e-3
"""Adam's learning rate, in every loop and script."""


class FitLoop(Protocol):
    """The signature every entry of :data:`LOOPS` has; ``options`` go to ``tbhooks.attach``."""

    def __call__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        train_loader: DataLoader,
        test_loader: DataLoader,
        *,
        epochs: int,
        logdir: str | Path,
        device: torch.device,
        **options: Any,
    ) -> dict[str, float]: ...


def hparams_of(model: nn.Module, optimizer: torch.optim.Optimizer, epochs: int, batch_size: int) -> dict[str, Any]:
    """The hyperparameters the demo records; every loop passes the same, so their HPARAMS rows match."""
    return {
        "model": type(model).__name__,
        "optimizer": type(optimizer).__name__,
        "lr": optimizer.param_groups[0]["lr"],
        "epochs": epochs,
        "batch_size": batch_size,
        "parameters": sum(p.numel() for p in model.parameters()),
    }


def fit_trainer(
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
    """Train with :class:`tbhooks.Trainer`; ``options`` go to ``tbhooks.attach`` (plugins, disable, ...)."""
    from tbhooks.trainer import Trainer

    trainer = Trainer(model, optimizer, nn.CrossEntropyLoss(), logdir=logdir, device=device, **options)
    return trainer.fit(train_loader, epochs=epochs, eval_loader=test_loader)


def fit_custom_loop(
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
    """The same training as :func:`fit_trainer`, as a hand-written loop around ``tbhooks.attach``."""
    from tbhooks.hooks import attach

    loss_fn = nn.CrossEntropyLoss()
    model.to(device)
    with attach(model, logdir=logdir, optimizer=optimizer, epochs=epochs, **options) as hooks:
        for _ in range(epochs):
            model.train()
            hooks.epoch_start()
            for inputs, targets in train_loader:
                inputs, targets = inputs.to(device), targets.to(device)
                hooks.batch_start()
                outputs = model(inputs)
                loss = loss_fn(outputs, targets)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                hooks.batch_end(inputs, targets, outputs, loss)
            hooks.epoch_end()
            model.eval()
            hooks.eval_start()
            with torch.no_grad():
                for inputs, targets in test_loader:
                    inputs, targets = inputs.to(device), targets.to(device)
                    outputs = model(inputs)
                    hooks.eval_batch(inputs, targets, outputs, loss_fn(outputs, targets))
            hooks.eval_end()
        return hooks.last_metrics


def _framework_loops() -> dict[str, FitLoop]:
    # Each module imports its framework only inside its fit function.
    from tbhooks.demo.loop_ignite import fit_ignite
    from tbhooks.demo.loop_lightning import fit_lightning
    from tbhooks.demo.text import fit_transformers

    return {"lightning": fit_lightning, "ignite": fit_ignite, "transformers": fit_transformers}


LOOPS: dict[str, FitLoop] = {"trainer": fit_trainer, "custom": fit_custom_loop, **_framework_loops()}
"""``--loop`` name -> fit function; the first entry is the default."""

NEEDS: dict[str, tuple[list[tuple[str, ...]], str]] = {
    "lightning": ([("lightning", "pytorch_lightning")], "tbhooks[lightning]"),
    "ignite": ([("ignite",)], "tbhooks[ignite]"),
    "transformers": ([("transformers",), ("accelerate",)], "tbhooks[transformers]"),
}
"""Per framework loop: the modules it needs (each tuple: any one of them) and the extra that installs them."""
