"""Argument checks of ``attach``, ``Trainer`` and the framework adapters: a clear error naming the argument and
what was expected."""

from __future__ import annotations

import inspect
import os
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Mapping


def check_class_names(class_names: object) -> list[str] | None:
    """``class_names`` as a list of strings, or ``None``."""
    if class_names is None:
        return None
    if isinstance(class_names, (str, bytes)) or not hasattr(class_names, "__iter__"):
        raise TypeError(f"class_names expects a sequence of names, got {type(class_names).__name__}")
    return [str(name) for name in class_names]  # type: ignore[attr-defined]


def check_output_option(output: object) -> None:
    """A ``TypeError`` naming ``output`` unless it is a key, an index, a callable or ``None``.

    ``True`` and ``False`` are refused although ``bool`` is an ``int``: they would pick output 1 or 0 unnoticed.
    """
    if isinstance(output, bool) or (output is not None and not isinstance(output, (str, int)) and not callable(output)):
        raise TypeError(
            f"output expects a dict key (str), a tuple index (int), a callable or None, got {type(output).__name__}"
        )


def check_model(model: object) -> None:
    """A ``TypeError`` naming ``model`` unless it is a ``torch.nn.Module``."""
    import torch

    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model expects a torch.nn.Module, got {type(model).__name__}")


def check_option_values(optimizer: Any, *, flush_secs: Any, start: tuple[Any, Any], hparams: Any) -> None:
    """The optimizer and the numeric and mapping options of ``attach``."""
    import torch

    if optimizer is not None and not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(f"optimizer expects a torch.optim.Optimizer or None, got {type(optimizer).__name__}")
    if isinstance(flush_secs, bool) or not isinstance(flush_secs, (int, float)) or flush_secs <= 0:
        raise ValueError(f"flush_secs expects a number of seconds > 0, got {flush_secs!r}")
    for arg, value in zip(("start_step", "start_epoch"), start, strict=True):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{arg} expects an int >= 0, got {value!r}")
    if hparams is not None and not hasattr(hparams, "items"):
        raise TypeError(f"hparams expects a mapping of name -> value, got {type(hparams).__name__}")


def check_run_options(model: Any, optimizer: Any, *, flush_secs: Any, start: tuple[Any, Any], hparams: Any) -> None:
    """The model, the optimizer and the numeric and mapping options of ``attach``."""
    check_model(model)
    check_option_values(optimizer, flush_secs=flush_secs, start=start, hparams=hparams)


def check_attach_options(options: Mapping[str, Any], *, taken: Mapping[str, str]) -> None:
    """Check an adapter's ``TbhooksCallback(**options)`` when it is made, as ``attach`` would check them later.

    :param options: what the callback hands on to :class:`tbhooks.Hooks` (``logdir`` included, ``None`` allowed).
    :param taken: each ``Hooks`` option that the framework supplies -> the ``TypeError`` message refusing it.

    Plugin objects (misspelled hooks) and ``disable=`` names are checked without building the built-in plugins
    or loading entry points.
    """
    from tbhooks.hooks import Hooks  # here, not at the top: tbhooks.hooks imports this module
    from tbhooks.manager import make_plugin_manager

    parameters = inspect.signature(Hooks.__init__).parameters
    accepted = [name for name in parameters if name not in ("self", *taken)]
    for name in options:
        if name in taken:
            raise TypeError(taken[name])
        if name not in accepted:
            raise TypeError(f"TbhooksCallback got an unexpected option {name!r}; it takes: {', '.join(accepted)}")
    logdir = options.get("logdir")
    if logdir is not None and not isinstance(logdir, (str, os.PathLike)):
        raise TypeError(f"logdir expects a path (str or os.PathLike) or None, got {type(logdir).__name__}")
    flush_secs, hparams = options.get("flush_secs", parameters["flush_secs"].default), options.get("hparams")
    check_option_values(options.get("optimizer"), flush_secs=flush_secs, start=(0, 0), hparams=hparams)
    check_output_option(options.get("output"))
    check_class_names(options.get("class_names"))
    plugins, disable = options.get("plugins", ()), options.get("disable", ())
    make_plugin_manager(plugins=plugins, disable=disable, autoload=False, builtins=False)
