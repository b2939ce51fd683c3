"""Argument checks of ``attach`` and ``Trainer``: a clear error naming the argument and what was expected."""

from __future__ import annotations

from typing import Any


def check_class_names(class_names: object) -> list[str] | None:
    """``class_names`` as a list of strings, or ``None``."""
    if class_names is None:
        return None
    if isinstance(class_names, (str, bytes)) or not hasattr(class_names, "__iter__"):
        raise TypeError(f"class_names expects a sequence of names, got {type(class_names).__name__}")
    return [str(name) for name in class_names]  # type: ignore[attr-defined]


def check_output_option(output: object) -> None:
    """A ``TypeError`` naming ``output`` unless it is a key, an index, a callable or ``None``."""
    if output is not None and not isinstance(output, (str, int)) and not callable(output):
        raise TypeError(
            f"output expects a dict key (str), a tuple index (int), a callable or None, got {type(output).__name__}"
        )


def check_run_options(model: Any, optimizer: Any, *, flush_secs: Any, start: tuple[Any, Any], hparams: Any) -> None:
    """The model, the optimizer and the numeric and mapping options of ``attach``."""
    import torch

    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model expects a torch.nn.Module, got {type(model).__name__}")
    if optimizer is not None and not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(f"optimizer expects a torch.optim.Optimizer or None, got {type(optimizer).__name__}")
    if isinstance(flush_secs, bool) or not isinstance(flush_secs, (int, float)) or flush_secs <= 0:
        raise ValueError(f"flush_secs expects a number of seconds > 0, got {flush_secs!r}")
    for arg, value in zip(("start_step", "start_epoch"), start, strict=True):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{arg} expects an int >= 0, got {value!r}")
    if hparams is not None and not hasattr(hparams, "items"):
        raise TypeError(f"hparams expects a mapping of name -> value, got {type(hparams).__name__}")
