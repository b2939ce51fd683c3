"""Module hooks: capture submodule outputs, inputs and gradients on a schedule.

Plugins ask through the ``on_capture_request`` event; the core attaches torch
hooks only around the steps where some request is due and removes every
handle afterwards.  The invariant this module keeps: outside
:meth:`Capturer.attach` ... :meth:`Capturer.detach`, the model's hook
dictionaries are exactly as the user left them.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import torch

if TYPE_CHECKING:
    from collections.abc import Iterable

    from torch import nn
    from torch.utils.hooks import RemovableHandle

Kind = Literal["output", "input", "grad_output"]
_KINDS: tuple[str, ...] = ("output", "input", "grad_output")


@dataclass(frozen=True)
class Capture:
    """A plugin's request to capture one tensor of one submodule.

    :param module: the submodule's name as in ``model.named_modules()``
        (``""`` is the model itself).
    :param kind: ``"output"`` (the forward output), ``"input"`` (the first
        positional input of forward) or ``"grad_output"`` (the gradient of
        the loss with respect to the module's output, via a full backward
        hook).
    :param every_n_steps: capture on training steps that are multiples of
        this; 0 never captures during training.
    :param at_eval: capture on every evaluation batch.
    """

    module: str
    kind: Kind = "output"
    every_n_steps: int = 0
    at_eval: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.module, str):
            raise TypeError(f"Capture(module=...) expects a submodule name (str), got {type(self.module).__name__}")
        if self.kind not in _KINDS:
            raise ValueError(f"Capture(kind=...) expects one of {', '.join(_KINDS)}, got {self.kind!r}")
        if not isinstance(self.every_n_steps, int) or isinstance(self.every_n_steps, bool) or self.every_n_steps < 0:
            raise ValueError(f"Capture(every_n_steps=...) expects an int >= 0, got {self.every_n_steps!r}")

    @property
    def key(self) -> str:
        """The key of the captured tensor in ``captured``: ``"<kind>:<module>"``."""
        return f"{self.kind}:{self.module}"

    def due(self, step: int) -> bool:
        """Whether this request captures on training step ``step``."""
        return self.every_n_steps > 0 and step % self.every_n_steps == 0


def _first_tensor(value: Any) -> torch.Tensor | None:
    """The tensor a hook stores: the value itself, or the first tensor of a tuple/list/dict."""
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, (tuple, list)):
        for item in value:
            found = _first_tensor(item)
            if found is not None:
                return found
    return None


class Capturer:
    """Owns the module hooks of one run.

    ``attach(requests)`` registers one hook per requested (module, kind) and
    returns; tensors land in :attr:`captured`.  ``detach()`` removes every
    handle, is idempotent, and is called by the core in ``finally`` blocks.
    """

    def __init__(self, model: nn.Module) -> None:
        self._model = model
        self._handles: list[RemovableHandle] = []
        self.captured: dict[str, torch.Tensor] = {}
        self.requests: tuple[Capture, ...] = ()
        self._modules: dict[str, nn.Module] = {}

    def set_requests(self, requests: Iterable[Capture]) -> None:
        """Validate and keep the requests; unknown module names are an error naming the known ones."""
        kept: list[Capture] = []
        names = dict(self._model.named_modules())
        for request in requests:
            if not isinstance(request, Capture):
                raise TypeError(f"on_capture_request must return Capture objects, got {type(request).__name__}")
            if request.module not in names:
                known = ", ".join(repr(n) for n in list(names)[:20])
                raise ValueError(f"Capture(module={request.module!r}): no such submodule; known: {known}")
            self._modules[request.module] = names[request.module]
            if request not in kept:
                kept.append(request)
        self.requests = tuple(kept)

    @staticmethod
    def _one_per_key(requests: Iterable[Capture]) -> list[Capture]:
        # Two plugins may ask for the same tensor on different schedules: each keeps
        # its schedule, and a step where both are due registers one hook, not two.
        unique: dict[str, Capture] = {}
        for request in requests:
            unique.setdefault(request.key, request)
        return list(unique.values())

    def due_for_step(self, step: int) -> list[Capture]:
        """The requests that capture on training step ``step``, one per key (cheap: no tensors touched)."""
        if not self.requests:
            return []
        return self._one_per_key(r for r in self.requests if r.due(step))

    def next_step(self, start: int) -> int:
        """The first training step from ``start`` on which some request captures
        (``sys.maxsize`` when none ever does): the core skips every step before it."""
        steps = [start + (-start) % r.every_n_steps for r in self.requests if r.every_n_steps > 0]
        return min(steps, default=sys.maxsize)

    def due_for_eval(self) -> list[Capture]:
        """The requests that capture on evaluation batches, one per key."""
        return self._one_per_key(r for r in self.requests if r.at_eval)

    @property
    def attached(self) -> bool:
        """Whether any hook is registered right now."""
        return bool(self._handles)

    def attach(self, requests: Iterable[Capture]) -> None:
        """Register the hooks for ``requests``; a no-op for an empty list."""
        for request in requests:
            module = self._modules[request.module]
            key = request.key
            if request.kind == "output":
                self._handles.append(module.register_forward_hook(self._store_output(key)))
            elif request.kind == "input":
                self._handles.append(module.register_forward_hook(self._store_input(key)))
            else:
                self._handles.append(module.register_full_backward_hook(self._store_grad(key)))

    def detach(self) -> bool:
        """Remove every hook this capturer registered; whether there were any.  Safe to call twice."""
        if not self._handles:
            return False
        handles, self._handles = self._handles, []
        for handle in handles:
            handle.remove()
        return True

    def take(self) -> dict[str, torch.Tensor]:
        """Return what was captured since the last call and start afresh."""
        captured, self.captured = self.captured, {}
        return captured

    # The hook closures store detached tensors only: no copy, no device sync.
    def _store_output(self, key: str) -> Any:
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            tensor = _first_tensor(output)
            if tensor is not None:
                self.captured[key] = tensor.detach()

        return hook

    def _store_input(self, key: str) -> Any:
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            tensor = _first_tensor(args)
            if tensor is not None:
                self.captured[key] = tensor.detach()

        return hook

    def _store_grad(self, key: str) -> Any:
        def hook(module: nn.Module, grad_input: Any, grad_output: Any) -> None:
            tensor = _first_tensor(grad_output)
            if tensor is not None:
                self.captured[key] = tensor.detach()

        return hook
