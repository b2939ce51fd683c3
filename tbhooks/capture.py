"""Module hooks: capture submodule outputs, inputs and output gradients for the plugins that ask.

On an eager model hooks are registered only around the steps where a request is due, then removed.
Compiled code ignores hooks added after compilation, so on a compiled model they are registered before
the first forward pass and stay until the run closes, gated by one flag the compiler guards on (two
compiled variants, whatever the schedule).  A probe (a forward pre-hook asking
``torch.compiler.is_compiling()``) tells the cases apart at the first forward pass.  Outside a run, the
model's hook dictionaries are exactly as the user left them."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import torch

from tbhooks.errors import TbhooksWarning

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

    from torch import nn
    from torch.utils.hooks import RemovableHandle

Kind = Literal["output", "input", "grad_output"]
_KINDS: tuple[str, ...] = ("output", "input", "grad_output")


@dataclass(frozen=True)
class Capture:
    """A plugin's request to capture one tensor of one submodule.

    :param module: the submodule's name as in ``model.named_modules()`` (``""`` is the model itself).
    :param kind: ``"output"`` (forward output), ``"input"`` (first positional input of forward) or
        ``"grad_output"`` (the loss's gradient with respect to the module's output).
    :param every_n_steps: capture on training steps that are multiples of this; 0 never during training.
    :param at_eval: capture on every evaluation batch."""

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


def first_tensor(value: Any) -> torch.Tensor | None:
    """The tensor a hook stores: the value itself, or the first tensor of a tuple/list/dict."""
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, (tuple, list)):
        for item in value:
            found = first_tensor(item)
            if found is not None:
                return found
    return None


class Capturer:
    """Owns the module hooks of one run: ``start_step``/``end_step`` around each forward pass
    (``step=None``: an evaluation batch), ``take`` for what was captured, ``close`` at the end."""

    def __init__(self, model: nn.Module) -> None:
        self._model = model
        self._requests: list[tuple[str, Capture]] = []
        self._modules: dict[str, nn.Module] = {}
        self._handles: list[RemovableHandle] = []
        self._keys: list[str] = []  # the keys of the hooks registered now
        self._captured: dict[str, torch.Tensor] = {}  # filled by the hooks; cleared in place
        self.active = False
        """Whether the hooks store what they see (read by every hook; a compiler guards on it)."""
        self.compiled: bool | None = None
        """Whether the model runs compiled code (known after the run's first forward pass)."""
        self._persistent = False
        self._probe: dict[str, bool] = {}
        self._train: list[Capture] = []  # the requests captured on training steps
        self._probes: list[RemovableHandle] = []

    def set_requests(self, requests: Iterable[tuple[str, Capture]]) -> None:
        """Validate and keep ``(plugin name, request)`` pairs; an unknown module is an error naming the known ones."""
        names = dict(self._model.named_modules())
        for owner, request in requests:
            if not isinstance(request, Capture):
                raise TypeError(f"on_capture_request must return Capture objects, got {type(request).__name__}")
            if request.module not in names:
                known = ", ".join(repr(n) for n in list(names)[:20])
                raise ValueError(f"Capture(module={request.module!r}): no such submodule; known: {known}")
            self._modules[request.module] = names[request.module]
            if (owner, request) not in self._requests:
                self._requests.append((owner, request))
        self._train = [request for _, request in self._requests if request.every_n_steps > 0]

    def _due(self, step: int | None) -> set[str]:
        """The keys captured at training step ``step`` (``None``: an evaluation batch)."""
        if step is None:
            return {r.key for _, r in self._requests if r.at_eval}
        return {r.key for _, r in self._requests if r.due(step)}

    def start_step(self, step: int | None) -> None:
        """Before the forward pass of training step ``step`` (``None``: an evaluation)."""
        if step is not None and self.compiled is not None and not self._train:
            return  # the common training step: nothing to capture, nothing registered
        keys = self._due(step)
        if self.compiled is None:
            if self._probe:  # a probe under way (another micro-batch of the same step): keep it
                self.active = bool(keys)
            else:
                self._start_probe(keys)
        elif self._persistent:
            self.active = bool(keys)
        else:
            self._remove()  # what a step that never ended left
            if keys:
                self._register([r for _, r in self._requests if r.key in keys])
                self.active = True

    def end_step(self, step: int | None) -> dict[str, torch.Tensor]:
        """After the step: what was captured for the keys due at ``step``; one-step hooks are removed."""
        if not self._handles and not self._captured and not self._probe:
            return {}
        if self.compiled is None and self._probe:
            self._end_probe()
        elif not self._persistent:
            self._remove()
        self.active = False
        return self.take(step)

    def take(self, step: int | None) -> dict[str, torch.Tensor]:
        """What was captured since the last call, for the keys due at ``step``, and start afresh."""
        if not self._captured:
            return {}
        keys = self._due(step)
        captured = {key: tensor for key, tensor in self._captured.items() if key in keys}
        self._captured.clear()  # in place: the hooks hold this dict
        return captured

    def close(self) -> None:
        """Remove every hook this capturer registered.  Safe to call twice."""
        for handle in self._probes:
            handle.remove()
        self._remove()
        self._persistent = False
        self.active = False

    def _start_probe(self, keys: set[str]) -> None:
        # Every hook is registered before the model's first call (a compiler compiles then, and sees them);
        # the probe goes on each requested module too (a loop may never call the model itself).
        probe = self._probe = {"seen": False, "compiling": False}

        def look(module: nn.Module, args: Any) -> None:
            probe["seen"] = True
            if torch.compiler.is_compiling():  # written, never read: a read would be guarded on and recompile
                probe["compiling"] = True

        self._register([r for _, r in self._requests])
        self._probes = [m.register_forward_pre_hook(look) for m in {self._model, *self._modules.values()}]
        self.active = bool(keys)

    def _end_probe(self) -> None:
        probe, self._probe = self._probe, {}
        self.compiled = probe["compiling"]
        if probe["compiling"]:
            # The compiled code runs these hooks: they stay (a compiler recompiles when hooks change).
            self._persistent = True
            return
        for handle in self._probes:
            handle.remove()
        self._remove()
        if not probe["seen"] and self._requests:
            for owner, request in self._requests:
                warnings.warn(
                    f"tbhooks: {owner} asked for the {request.kind} of module {request.module!r}, but the model "
                    f"ran without calling module hooks: it was compiled and called before tbhooks attached "
                    f"(compiled code ignores hooks added later), or the loop calls model.forward directly. "
                    f"Attach before the model's first call (or pass Trainer(compile=True)); nothing is captured.",
                    TbhooksWarning,
                    stacklevel=4,
                )
            self._requests, self._train = [], []

    def _register(self, requests: Iterable[Capture]) -> None:
        for request in requests:
            if request.key in self._keys:
                continue  # two plugins asking for one tensor share one hook
            self._keys.append(request.key)
            module = self._modules[request.module]
            self._handles.append(module.register_forward_hook(self._hook(request)))

    def _remove(self) -> None:
        handles, self._handles = self._handles, []
        for handle in handles:
            handle.remove()
        self._keys.clear()

    def _hook(self, request: Capture) -> Callable[..., None]:
        # The closures store detached tensors only: no copy, no device sync.
        key, kind, store = request.key, request.kind, self._captured

        def hook(module: nn.Module, args: Any, output: Any) -> None:
            if not self.active:
                return
            tensor = first_tensor(args if kind == "input" else output)
            if tensor is None:
                return
            if kind != "grad_output":
                store[key] = tensor.detach()
            elif tensor.requires_grad:
                # A tensor hook, not a module backward hook: compiled code supports it.
                tensor.register_hook(lambda grad: store.__setitem__(key, grad.detach()))

        return hook
