"""The PyTorch TensorBoard tutorial's network, the model every demo loop trains."""

from __future__ import annotations

import torch
import torch.nn.functional as F  # noqa: N812 (the conventional name)
from torch import nn


class Net(nn.Module):
    """The tutorial's network for 1x28x28 inputs, returning the class scores (logits).

    ``conv(1, 6, 5) -> pool -> conv(6, 16, 5) -> pool -> fc 256 -> 120 -> 84 -> classes``, ReLU but last.
    """

    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 6, 5)
        self.pool = nn.MaxPool2d(2, 2)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.fc1 = nn.Linear(16 * 4 * 4, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The class scores (logits) of a ``[N, 1, 28, 28]`` batch."""
        x = self.pool(F.relu(self.conv1(x)))
        x = self.pool(F.relu(self.conv2(x)))
        x = torch.flatten(x, 1)
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        return self.fc3(x)
