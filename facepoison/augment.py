"""Differentiable augmentation for crafting, with replayable random parameters.

Randomness comes from outside (a ``torch.Generator``); ``sample`` draws the parameters and ``apply``
replays them, so the exact same transform can be applied twice (kornia's convention).
"""

from __future__ import annotations

import torch
from torch import Tensor

from facepoison.registry import Registry
from recognition.augment import ShiftFlipParams, apply_shift_flip, sample_shift_flip


class Augmentation:
    """Base class: ``sample`` draws parameters, ``apply`` replays them, calling does both."""

    def sample(self, images: Tensor, generator: torch.Generator | None = None):  # pragma: no cover - interface
        raise NotImplementedError

    def apply(self, images: Tensor, params) -> Tensor:  # pragma: no cover - interface
        raise NotImplementedError

    def __call__(self, images: Tensor, generator: torch.Generator | None = None) -> Tensor:
        return self.apply(images, self.sample(images, generator))


class ShiftFlip(Augmentation):
    """Random shift by up to ``max_shift`` pixels (or a fraction of the width) and random horizontal flip.

    Example:
        >>> aug = ShiftFlip(max_shift=4)
        >>> g = torch.Generator().manual_seed(0)
        >>> params = aug.sample(x, g)
        >>> torch.equal(aug.apply(x, params), aug.apply(x, params))
        True
    """

    def __init__(self, max_shift: int | float = 0.125, flip: bool = True) -> None:
        if max_shift < 0:
            raise ValueError(f"max_shift must be >= 0, got {max_shift}")
        self.max_shift = max_shift
        self.flip = flip

    def shift_pixels(self, width: int) -> int:
        if isinstance(self.max_shift, float) and self.max_shift < 1:
            return int(round(self.max_shift * width))
        return int(self.max_shift)

    def sample(self, images: Tensor, generator: torch.Generator | None = None) -> ShiftFlipParams:
        return sample_shift_flip(images.shape[0], self.shift_pixels(images.shape[-1]), self.flip, generator)

    def apply(self, images: Tensor, params: ShiftFlipParams) -> Tensor:
        return apply_shift_flip(images, params, self.shift_pixels(images.shape[-1]))


class Identity(Augmentation):
    def sample(self, images: Tensor, generator: torch.Generator | None = None) -> None:
        return None

    def apply(self, images: Tensor, params: None) -> Tensor:
        return images


AUGMENTATIONS: Registry[Augmentation] = Registry("augmentation")
AUGMENTATIONS.register("none")(Identity)
AUGMENTATIONS.register("shift_flip")(ShiftFlip)
AUGMENTATIONS.register("flip")(lambda: ShiftFlip(max_shift=0, flip=True))


def create_augmentation(name: str, **kwargs) -> Augmentation:
    """Build an augmentation by name: ``none``, ``flip`` or ``shift_flip`` (kwargs: max_shift, flip)."""
    return AUGMENTATIONS.create(name, **kwargs)

