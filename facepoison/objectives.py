"""Crafting objectives and regularizers, chosen once by name from a registry.

An objective maps a poisoned batch to a scalar loss that the crafter minimises:

- ``alignment``: 1 - cos(T, ∇θ Σ L(F(x+Δ), y)), the seed paper's objective (optionally independent mode);
- ``tensorclog``: ‖∇θ Σ L(F(x+Δ), y)‖, gradient vanishing (Shen et al. 2019);
- ``random``: no optimisation; Δ is ±ε per pixel, uniformly at random (the corners of the ball).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from facepoison.losses import LogitsFn, alignment_loss, flat_grad, ssim, total_variation
from facepoison.registry import Registry


class Objective:
    """Base class. ``optimizes`` is False for objectives that only draw Δ (random noise)."""

    name: str = ""
    optimizes: bool = True
    needs_target: bool = False

    def loss(
        self, logits_fn: LogitsFn, params: Sequence[Tensor], images: Tensor, labels: Tensor, create_graph: bool = True
    ) -> Tensor:
        """Scalar loss of the (already perturbed and augmented) ``images``."""
        raise NotImplementedError


def training_gradient(
    logits_fn: LogitsFn, params: Sequence[Tensor], images: Tensor, labels: Tensor, create_graph: bool
) -> Tensor:
    """g = ∇θ Σ_i CE(F(x_i), y_i), flat, the gradient a victim would take on this batch."""
    loss = F.cross_entropy(logits_fn(images, labels), labels, reduction="sum")
    return flat_grad(loss, params, create_graph=create_graph)


class AlignmentObjective(Objective):
    """A = 1 - cos(T, g); see :func:`facepoison.losses.alignment_loss`.

    Args:
        target: flat target gradient T from :func:`facepoison.losses.target_gradient`.
        independent: detach ‖g‖ so every image or shard is crafted on its own.
    """

    name = "alignment"
    needs_target = True

    def __init__(self, target: Tensor, independent: bool = False) -> None:
        if target.ndim != 1:
            raise ValueError(f"target gradient must be a flat vector, got shape {tuple(target.shape)}")
        self.target = target
        self.independent = independent
        self._placed: Tensor | None = None  # the target on the crafting device, copied once

    def loss(self, logits_fn, params, images, labels, create_graph=True):
        grad = training_gradient(logits_fn, params, images, labels, create_graph)
        if self._placed is None or self._placed.device != grad.device or self._placed.dtype != grad.dtype:
            self._placed = self.target.to(device=grad.device, dtype=grad.dtype)
        return alignment_loss(self._placed, grad, independent=self.independent)


class TensorClogObjective(Objective):
    """‖∇θ Σ L(F(x+Δ), y)‖: make the training gradient vanish."""

    name = "tensorclog"

    def __init__(self, target: Tensor | None = None, independent: bool = False) -> None:
        del target, independent  # same constructor as the other objectives; neither is used here

    def loss(self, logits_fn, params, images, labels, create_graph=True):
        return training_gradient(logits_fn, params, images, labels, create_graph).norm()


class RandomNoiseObjective(Objective):
    """Uniform ±ε at the corners of the ball; nothing to optimise."""

    name = "random"
    optimizes = False

    def __init__(self, target: Tensor | None = None, independent: bool = False) -> None:
        del target, independent

    def loss(self, logits_fn, params, images, labels, create_graph=True):
        return torch.zeros((), device=images.device)


OBJECTIVES: Registry[Objective] = Registry("objective")
OBJECTIVES.register("alignment")(AlignmentObjective)
OBJECTIVES.register("tensorclog")(TensorClogObjective)
OBJECTIVES.register("random")(RandomNoiseObjective)


def create_objective(name: str, target: Tensor | None = None, independent: bool = False) -> Objective:
    """Build an objective by name (``alignment``, ``tensorclog``, ``random``)."""
    builder = OBJECTIVES.get(name)
    if name == "alignment" and target is None:
        raise ValueError("the alignment objective needs a target gradient")
    return builder(target=target, independent=independent)


# Regularizers: per-image penalties of (clean images, perturbation), averaged over the batch by the crafter.
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
