"""Sum per-step loss tensors without a device operation, or a sync, on every step.

Adding two tensors costs a kernel launch (a few microseconds on the CPU,
more with CUDA's launch latency) on every training step.  Keeping a reference
costs a list append; the references are folded into one tensor with a single
``torch.stack(...).sum()`` every ``fold`` steps and when the value is needed.
Nothing here reads a value back: that is left to the caller, on a step that logs.
"""

from __future__ import annotations

import torch


class DeviceSum:
    """A running sum of scalar tensors, kept on their device.

    :param fold: how many references to hold before folding them into the total.
    """

    __slots__ = ("_fold", "_pending", "_total", "count")

    def __init__(self, fold: int = 256) -> None:
        self._fold = fold
        self._pending: list[torch.Tensor] = []
        self._total: torch.Tensor | None = None
        self.count = 0

    def add(self, value: torch.Tensor) -> None:
        """Add a detached scalar tensor (a one-element tensor of any float dtype)."""
        self._pending.append(value)
        self.count += 1
        if len(self._pending) >= self._fold:
            self._collapse()

    def _collapse(self) -> None:
        pending = [v if v.ndim == 0 else v.reshape(()) for v in self._pending]
        stacked = torch.stack(pending)
        # float64 where the device has it: totals are subtracted to get interval sums.  Summed
        # with dtype= rather than converted first: one operation fewer on a step that logs.
        dtype = torch.float32 if stacked.device.type == "mps" else torch.float64
        folded = stacked.sum(dtype=dtype)
        self._total = folded if self._total is None else self._total + folded
        self._pending = []

    def total(self) -> torch.Tensor | None:
        """The sum so far as a float64 tensor (float32 on MPS) on the values' device, or ``None`` when empty."""
        if self._pending:
            self._collapse()
        return self._total

    def mean(self) -> torch.Tensor | None:
        """The mean so far as a tensor (no sync), or ``None`` when nothing was added."""
        total = self.total()
        return None if total is None else total / self.count

    def reset(self) -> None:
        """Forget everything added."""
        self._pending = []
        self._total = None
        self.count = 0
