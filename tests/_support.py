"""Small synthetic data, models and plugins shared by the tests (no downloads, a few ms each)."""

from __future__ import annotations

import torch
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils.data import DataLoader, TensorDataset

import tbhooks
from tbhooks.manager import BUILTIN_PLUGINS

QUIET = [name for name in BUILTIN_PLUGINS if name != "scalars"]
"""``disable=QUIET``: every built-in plugin off but the scalars (fast runs whose steps the scalars show)."""

READ_BACKS = {"item", "cpu", "tolist", "numpy", "__float__", "__int__", "__bool__", "__index__"}
"""Tensor methods that read a value back to the host (a device sync off the CPU)."""


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


class Calls(TorchFunctionMode):
    """Records the name of every torch function called while it is active."""

    def __init__(self) -> None:
        super().__init__()
        self.names: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        self.names.append(getattr(func, "__name__", str(func)))
        return func(*args, **(kwargs or {}))


class Faulty:
    """Raises ZeroDivisionError in ``hook`` (on_batch_end, on_eval or on_epoch_end) from its call
    ``after + 1`` on; counts its calls of ``hook`` in ``calls``.  The other two hooks do nothing."""

    name = "faulty"

    def __init__(self, hook: str, after: int = 0) -> None:
        self.hook, self.after, self.calls = hook, after, 0

    def _maybe_fail(self, hook: str) -> None:
        if hook == self.hook:
            self.calls += 1
            if self.calls > self.after:
                raise ZeroDivisionError(f"faulty plugin broke in {hook}")

    @tbhooks.hookimpl
    def on_batch_end(self):
        self._maybe_fail("on_batch_end")

    @tbhooks.hookimpl
    def on_eval(self):
        self._maybe_fail("on_eval")

    @tbhooks.hookimpl
    def on_epoch_end(self):
        self._maybe_fail("on_epoch_end")


class EveryStep:
    """Implements on_batch_end without ``batch_end_due``: the core raises the event on every step."""

    name = "every_step"

    @tbhooks.hookimpl
    def on_batch_end(self):
        pass


class StopAt:
    """Asks the run to stop at training step ``at``."""

    name = "stop_at"

    def __init__(self, at: int) -> None:
        self.at = at

    @tbhooks.hookimpl
    def on_batch_end(self, run, step):
        if step == self.at:
            run.request_stop("enough")
