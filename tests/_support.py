"""Small synthetic data and models shared by the core tests (no downloads, a few ms each)."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


def classification_data(n: int = 48, features: int = 6, classes: int = 3, seed: int = 0) -> TensorDataset:
    """Separable-ish random classification data: the label is the argmax of a fixed projection."""
    generator = torch.Generator().manual_seed(seed)
    inputs = torch.randn(n, features, generator=generator)
    weights = torch.randn(features, classes, generator=generator)
    return TensorDataset(inputs, (inputs @ weights).argmax(dim=1))


def loader(dataset: TensorDataset, batch_size: int = 8) -> DataLoader:
    """A deterministic, unshuffled loader."""
    return DataLoader(dataset, batch_size=batch_size, shuffle=False)


def mlp(features: int = 6, classes: int = 3, seed: int = 0) -> nn.Sequential:
    """A two-layer MLP with fixed initial weights."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(features, 16), nn.ReLU(), nn.Linear(16, classes))


def hook_counts(model: nn.Module) -> list[tuple[int, int, int, int]]:
    """Per module: forward, forward-pre, backward and backward-pre hook counts."""
    return [
        (len(m._forward_hooks), len(m._forward_pre_hooks), len(m._backward_hooks), len(m._backward_pre_hooks))
        for m in model.modules()
    ]
