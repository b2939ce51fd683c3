"""Constructor checks shared by the built-in plugins: precise messages naming the option."""

from __future__ import annotations

from typing import Any


def check_int(plugin: str, option: str, value: Any, *, minimum: int = 0) -> int:
    """``value`` if it is an int >= ``minimum`` (bools refused); else an error naming ``plugin(option=)``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{plugin}({option}=...) expects an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{plugin}({option}=...) expects an int >= {minimum}, got {value}")
    return value


def check_bool(plugin: str, option: str, value: Any) -> bool:
    """``value`` if it is a bool, else a TypeError naming ``plugin(option=)``."""
    if not isinstance(value, bool):
        raise TypeError(f"{plugin}({option}=...) expects True or False, got {type(value).__name__}")
    return value
