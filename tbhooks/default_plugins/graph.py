"""Graph: the model graph, traced once per fit from the first training batch.

``SummaryWriter.add_graph``'s ``torch.jit.trace`` fails on models that take keyword arguments or return dicts or
non-tensors, so it is handed a :class:`TracedModel` wrapper instead (shown as ``<ModelClass>[model]`` inside a
``TracedModel`` node).  A model that still cannot be traced gets a Markdown text summary, with one warning.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import warnings
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from tbhooks.default_plugins.common import check_bool, is_sharded
from tbhooks.markers import hookimpl

if TYPE_CHECKING:
    from tbhooks.run import Run

TEXT_TAG = "graph/summary"


class _Slot:
    """Marks where the ``index``-th traced tensor goes back into the inputs' structure."""

    __slots__ = ("index",)

    def __init__(self, index: int) -> None:
        self.index = index


def _rebuild(original: tuple[Any, ...] | list[Any], items: list[Any]) -> Any:
    """A tuple, list or named tuple of the same type as ``original`` holding ``items``."""
    if isinstance(original, tuple) and hasattr(original, "_fields"):
        return type(original)(*items)
    return type(original)(items)


def _split_inputs(value: Any, tensors: list[torch.Tensor]) -> Any:
    """``value`` with every tensor replaced by a :class:`_Slot`, the tensors appended to ``tensors``."""
    if isinstance(value, torch.Tensor):
        tensors.append(value)
        return _Slot(len(tensors) - 1)
    if isinstance(value, dict):
        return {key: _split_inputs(item, tensors) for key, item in value.items()}
    if isinstance(value, (tuple, list)):
        return _rebuild(value, [_split_inputs(item, tensors) for item in value])
    return value


def _fill_inputs(template: Any, tensors: tuple[torch.Tensor, ...]) -> Any:
    """The inverse of :func:`_split_inputs`: put ``tensors`` back where the slots are."""
    if isinstance(template, _Slot):
        return tensors[template.index]
    if isinstance(template, dict):
        return {key: _fill_inputs(item, tensors) for key, item in template.items()}
    if isinstance(template, (tuple, list)):
        return _rebuild(template, [_fill_inputs(item, tensors) for item in template])
    return template


def flatten_outputs(value: Any) -> list[torch.Tensor]:
    """Every tensor in a model's outputs, in order (dict values, tuple/list items, dataclass fields); the rest is
    dropped."""
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, dict):
        value = list(value.values())
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = [getattr(value, f.name) for f in dataclasses.fields(value)]
    if isinstance(value, (tuple, list)):
        return [tensor for item in value for tensor in flatten_outputs(item)]
    return []


class TracedModel(nn.Module):
    """What the graph plugin traces: ``model`` called like the Trainer calls it, outputs flattened.

    ``forward`` takes the batch's tensors positionally (the tracer passes only tensors) and rebuilds the inputs
    around them (a dict as keyword arguments, a tuple or list as positional ones); non-tensor parts are constants.
    """

    def __init__(self, model: nn.Module, template: Any, direct: bool = False) -> None:
        super().__init__()
        self.model = model
        self._template = template
        # A model compiled in place (model.compile()) runs compiled code when called, which the
        # tracer refuses: its forward is called directly instead (the submodules' calls are eager).
        self._direct = direct

    def forward(self, *tensors: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        inputs = _fill_inputs(self._template, tensors)
        call = self.model.forward if self._direct else self.model
        if isinstance(inputs, dict):
            outputs = call(**inputs)
        elif isinstance(inputs, (tuple, list)):
            outputs = call(*inputs)
        else:
            outputs = call(inputs)
        flat = flatten_outputs(outputs)
        if not flat:
            raise TypeError(f"the model returned a {type(outputs).__name__} holding no tensor")
        return flat[0] if len(flat) == 1 else tuple(flat)


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """``(total, trainable)`` parameter counts; shared parameters count once, uninitialised lazy ones as 0."""
    total = trainable = 0
    for parameter in model.parameters():
        if isinstance(parameter, nn.parameter.UninitializedParameter):
            continue
        total += parameter.numel()
        if parameter.requires_grad:
            trainable += parameter.numel()
    return total, trainable


def model_summary(model: nn.Module) -> str:
    """A Markdown summary of ``model``: parameter counts and ``str(model)`` in a code block."""
    total, trainable = count_parameters(model)
    return (
        f"**{type(model).__name__}**: {total:,} parameters "
        f"({trainable:,} trainable, {total - trainable:,} frozen)\n\n"
        f"```\n{model}\n```"
    )


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Any:
    """Every submodule in eval mode; on exit, each one's own training flag restored (``model.train(flag)`` would
    unfreeze a submodule the user froze in eval mode, a frozen BatchNorm, say)."""
    modes = [(module, module.training) for module in model.modules()]
    try:
        model.eval()
        yield
    finally:
        for module, training in modes:
            module.training = training


class Graph:
    """Log the model graph (GRAPHS dashboard) at the first ``on_batch_end`` of each fit, on rank 0.

    The trace runs the model once more on that batch, in eval mode, under ``torch.no_grad()``.  When tracing
    fails: one warning, and ``str(model)`` with parameter counts under ``graph/summary`` (TEXT dashboard).

    :param text_fallback: log the text summary when tracing fails (default True); with False only warn.
    """

    name = "graph"

    def __init__(self, text_fallback: bool = True) -> None:
        self.text_fallback = check_bool("Graph", "text_fallback", text_fallback)
        self._done = False

    def batch_end_due(self, step: int) -> bool:
        """Due on the first batch of a fit only."""
        return not self._done

    @hookimpl
    def on_fit_start(self) -> None:
        self._done = False

    @hookimpl
    def on_batch_end(self, run: Run, step: int, inputs: Any) -> None:
        self._done = True
        if not run.is_writer:
            return
        model = run.model
        if inputs is None:  # a host that hands over no inputs (a framework step returning only its loss)
            run.info_once("graph:no-inputs", "tbhooks: graph skipped: the loop passes no inputs to trace with")
            return
        if any(is_sharded(parameter) for parameter in model.parameters()):
            # Tracing runs the model on this rank alone, while a sharded model's forward pass is a
            # collective of every rank: it would wait for the others forever.
            name = type(model).__name__
            run.info_once("graph:sharded", f"tbhooks: graph: {name} is sharded (FSDP); text summary only")
            run.writer.add_text(TEXT_TAG, model_summary(model), step)
            return
        try:
            self._trace(run, model, inputs)
        except Exception as exc:
            lines = str(exc).strip().splitlines()
            reason = f"{type(exc).__name__}: {lines[0] if lines else ''}"
            if len(reason) > 300:
                reason = reason[:297] + "..."
            if self.text_fallback:
                text = f"The model graph could not be traced (`{reason}`).\n\n{model_summary(model)}"
                run.writer.add_text(TEXT_TAG, text, step)
            fallback = f"; its text summary is logged under {TEXT_TAG!r} instead" if self.text_fallback else ""
            run.warn_once(
                "graph:trace-failed",
                f"tbhooks: graph could not trace {type(model).__name__} ({reason}){fallback}",
            )

    def _trace(self, run: Run, model: nn.Module, inputs: Any) -> None:
        tensors: list[torch.Tensor] = []
        wrapper = TracedModel(model, _split_inputs(inputs, tensors), direct=bool(run.compiled))
        with (
            _eval_mode(model),
            torch.no_grad(),
            warnings.catch_warnings(),
            # add_graph prints the tracer's error before re-raising it; on_batch_end's warning reports it.
            contextlib.redirect_stdout(io.StringIO()),
        ):
            # About the trace, not the user's code: torch.jit.trace's deprecation, TracerWarnings (Python
            # values taken from tensors), and deprecated submodule attributes the tracer reads.
            warnings.filterwarnings("ignore", category=FutureWarning)
            warnings.filterwarnings("ignore", category=DeprecationWarning)
            warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
            run.writer.add_graph(wrapper, tuple(tensors))
