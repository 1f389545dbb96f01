"""What every defense shares: the registry, argument checks and the uint8 image contract."""

from __future__ import annotations

import torch
from torch import Tensor

from facepoison.registry import Registry

DEFENSES: Registry = Registry("defense")


def require(ok: bool, message: str) -> None:
    """A ValueError with ``message`` unless ``ok``."""
    if not ok:
        raise ValueError(message)


def check_images(images: Tensor, u8: bool) -> None:
    """``(N, C, H, W)`` images: uint8 with C in (1, 3) when ``u8``, else floating point."""
    if u8:
        ok, want = images.dtype == torch.uint8 and images.ndim == 4 and images.shape[1] in (1, 3), "uint8, C in (1, 3)"
    else:
        ok, want = images.is_floating_point() and images.ndim == 4, "float in [0, 1]"
    require(ok, f"expected images (N, C, H, W) {want}, got {images.dtype} {tuple(images.shape)}")


def generator_device(generator: torch.Generator | None) -> torch.device:
    """Where random draws happen: the generator's device, so a CPU generator replays on any image device."""
    return generator.device if generator is not None else torch.device("cpu")


def int_at_least(value: object, low: int, what: str) -> None:
    """``value`` is an int ≥ ``low``."""
    require(isinstance(value, int) and value >= low, f"{what} must be an int >= {low}, got {value!r}")


def check_quality(value: object, what: str = "quality") -> None:
    """``value`` is a JPEG quality, an int in [1, 100]."""
    require(isinstance(value, int) and 1 <= value <= 100, f"{what} must be an int in [1, 100], got {value!r}")
