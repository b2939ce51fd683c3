"""The epoch's training losses, summed on their device without a read-back or a kernel launch per step:
references are appended and folded into the total every :data:`FOLD` values with one ``stack`` and ``sum``."""

from __future__ import annotations

import torch

FOLD = 256
"""How many loss references are held before they are folded into the total."""


class LossSum:
    """A running sum of scalar loss tensors, kept on their device until asked for."""

    def __init__(self) -> None:
        self._pending: list[torch.Tensor] = []
        self._total: torch.Tensor | None = None
        self.count = 0
        """How many values were added since the last reset."""

    def add(self, value: torch.Tensor) -> None:
        """Add a detached one-element tensor of any float dtype; nothing is read back."""
        self._pending.append(value)
        self.count += 1
        if len(self._pending) >= FOLD:
            self._fold()

    def _fold(self) -> None:
        stacked = torch.stack([value.reshape(()) for value in self._pending])
        # float64 where the device has it (MPS has not): long epochs sum many values.
        folded = stacked.sum(dtype=torch.float32 if stacked.device.type == "mps" else torch.float64)
        self._total = folded if self._total is None else self._total + folded
        self._pending.clear()

    def total(self) -> torch.Tensor | None:
        """The sum so far as a tensor on the values' device (no sync), or ``None`` when empty."""
        if self._pending:
            self._fold()
        return self._total

    def reset(self) -> None:
        """Forget everything added."""
        self._pending.clear()
        self._total = None
        self.count = 0
