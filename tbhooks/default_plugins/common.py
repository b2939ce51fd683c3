"""Helpers the built-in plugins share (third-party plugins may use them too): option checks and image handling.

The image helpers run on the tensor's device and read nothing back, so plugins choose when a device sync happens.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from tbhooks.run import Run


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


SPRITE_MAX_PX = 8192
"""The largest sprite side TensorBoard's projector loads (a WebGL texture limit)."""


def check_floats(plugin: str, option: str, value: Any, *, positive: bool = False) -> tuple[float, ...] | None:
    """``value`` as a tuple of floats (one per channel), or ``None``.

    Errors name ``plugin(option=)``: a TypeError for anything but ``None`` or a sequence of real numbers, a
    ValueError for an empty one, non-finite numbers or, with ``positive``, numbers <= 0.
    """
    if value is None:
        return None
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise TypeError(
            f"{plugin}({option}=...) expects a sequence of per-channel floats or None, got {type(value).__name__}"
        )
    if not value:
        raise ValueError(f"{plugin}({option}=...) expects at least one value, got an empty sequence")
    numbers: list[float] = []
    for item in value:
        if isinstance(item, bool) or not isinstance(item, (int, float)):
            raise TypeError(f"{plugin}({option}=...) expects numbers, got {type(item).__name__} {item!r}")
        number = float(item)
        if not math.isfinite(number) or (positive and number <= 0):
            wanted = "finite numbers > 0" if positive else "finite numbers"
            raise ValueError(f"{plugin}({option}=...) expects {wanted}, got {item!r}")
        numbers.append(number)
    return tuple(numbers)


def image_batch(value: Any) -> torch.Tensor | None:
    """``value`` as an ``[N, C, H, W]`` image batch (a view), or ``None`` if it is not one.

    Accepted: non-empty float or uint8 ``[N, C, H, W]`` with 1 or 3 channels, or ``[N, H, W]``.  Only shapes and
    dtypes are read: no device sync.
    """
    if not isinstance(value, torch.Tensor) or value.shape[0:1] == (0,) or value.numel() == 0:
        return None
    if not (value.is_floating_point() or value.dtype == torch.uint8):
        return None
    if value.ndim == 3:
        value = value.unsqueeze(1)
    if value.ndim != 4 or value.shape[1] not in (1, 3):
        return None
    return value


def to_unit(
    images: torch.Tensor,
    mean: tuple[float, ...] | None,
    std: tuple[float, ...] | None,
    *,
    run: Run,
    who: str,
) -> torch.Tensor:
    """``images`` (``[N, C, H, W]``) as float32 in ``[0, 1]``, on their device.

    uint8 images are divided by 255 (``mean``/``std`` describe float inputs only); float images become
    ``x * std + mean`` per channel, clamped.  A ``mean``/``std`` not of length 1 or C is ignored, with one warning.
    """
    if images.dtype == torch.uint8:
        return images.float() / 255.0
    out = images.float()
    channels = images.shape[1]
    if mean is not None or std is not None:
        mean_ = mean or (0.0,)
        std_ = std or (1.0,)
        if all(len(v) in (1, channels) for v in (mean_, std_)):
            shape = (1, -1, 1, 1)
            s = torch.tensor(std_, dtype=out.dtype, device=out.device).reshape(shape)
            m = torch.tensor(mean_, dtype=out.dtype, device=out.device).reshape(shape)
            out = out * s + m
        else:
            run.warn_once(
                f"{who}:mean-std-channels",
                f"tbhooks: {who}: mean={mean} / std={std} do not match images with {channels} channel(s); "
                f"images are shown without un-normalising",
            )
    return out.clamp(0.0, 1.0)


def to_uint8(unit: torch.Tensor) -> torch.Tensor:
    """Float images in ``[0, 1]`` as uint8 ``[0, 255]``, rounded to the nearest level."""
    return (unit * 255.0).round().to(torch.uint8)


def thumbnail_side(count: int, side: int, limit: int | None = None) -> int:
    """``side``, or the largest smaller one (at least 1) at which a sprite of ``count`` square thumbnails fits
    in ``limit`` pixels (default :data:`SPRITE_MAX_PX`, read at call time), ``ceil(sqrt(count))`` a row."""
    if limit is None:
        limit = SPRITE_MAX_PX
    per_row = max(1, math.ceil(math.sqrt(count)))
    return max(1, min(side, limit // per_row))


def square_thumbnails(images: torch.Tensor, side: int) -> torch.Tensor:
    """``[N, C, H, W]`` images in ``[0, 1]`` as ``[N, C, side, side]`` thumbnails: padded black to a square
    (the projector's sprite cells are square), then resized with antialiasing."""
    height, width = images.shape[-2:]
    if height != width:
        size = max(height, width)
        top, left = (size - height) // 2, (size - width) // 2
        images = torch.nn.functional.pad(images, (left, size - width - left, top, size - height - top))
    if images.shape[-1] != side:
        images = torch.nn.functional.interpolate(
            images, size=(side, side), mode="bilinear", align_corners=False, antialias=True
        ).clamp(0.0, 1.0)
    return images


@functools.cache
def _dtensor_type() -> type | None:
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # a torch built without distributed support
        return None
    return DTensor


def is_sharded(tensor: torch.Tensor) -> bool:
    """Whether ``tensor`` is a DTensor (a parameter or gradient sharded by FSDP2)."""
    dtensor = _dtensor_type()
    return dtensor is not None and isinstance(tensor, dtensor)
