"""Regularizers of the crafter: per-image penalties of (clean images, perturbation), averaged over the batch and
added to the objective with a weight (``--reg ssim=0.1``), chosen by name from a registry."""

from __future__ import annotations

from torch import Tensor

from facepoison.losses import ssim, total_variation
from facepoison.registry import Registry

REGULARIZERS: Registry = Registry("regularizer")


@REGULARIZERS.register("l2")
def l2_penalty(images: Tensor, delta: Tensor) -> Tensor:
    """Mean squared perturbation per image."""
    return delta.pow(2).flatten(1).mean(1)


@REGULARIZERS.register("ssim")
def ssim_penalty(images: Tensor, delta: Tensor) -> Tensor:
    """1 - SSIM(x, x + Δ) per image."""
    return 1.0 - ssim(images, images + delta)


@REGULARIZERS.register("tv")
def tv_penalty(images: Tensor, delta: Tensor) -> Tensor:
    """Total variation of the perturbation per image."""
    return total_variation(delta)
