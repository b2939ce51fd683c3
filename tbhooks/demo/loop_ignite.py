"""The demo's training through PyTorch-Ignite and :mod:`tbhooks.integrations.ignite` (an entry of ``LOOPS``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from torch import nn

if TYPE_CHECKING:
    from pathlib import Path

    import torch
    from torch.utils.data import DataLoader


def fit_ignite(
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
    """The training of :func:`tbhooks.demo.loops.fit_trainer` by an Ignite trainer and evaluator.

    ``options`` go to ``tbhooks.attach``.  Returns the last evaluation's metrics.
    """
    from ignite.engine import Events, create_supervised_evaluator, create_supervised_trainer

    from tbhooks.integrations.ignite import attach

    loss_fn = nn.CrossEntropyLoss()
    model.to(device)
    # Tensors, not Ignite's default loss.item(): no device sync on the steps no plugin logs.
    trainer = create_supervised_trainer(
        model,
        optimizer,
        loss_fn,
        device=device,
        output_transform=lambda x, y, y_pred, loss: (x, y, y_pred, loss),
    )
    # The inputs (embeddings, figures) and the batch loss (eval/loss) besides (y_pred, y).
    evaluator = create_supervised_evaluator(
        model,
        device=device,
        output_transform=lambda x, y, y_pred: (x, y, y_pred, loss_fn(y_pred, y)),
    )
    hooks = attach(trainer, model, evaluator=evaluator, logdir=logdir, optimizer=optimizer, epochs=epochs, **options)
    trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda: evaluator.run(test_loader))
    trainer.run(train_loader, max_epochs=epochs)
    return hooks.last_metrics
