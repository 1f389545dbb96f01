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
    """Base class: ``sample`` draws parameters, ``apply`` replays them, calling does both.

    Shape: images ``(N, C, H, W)`` in [0, 1] → the same shape; ``apply`` is differentiable in the images.
    """

    def sample(self, images: Tensor, generator: torch.Generator | None = None):  # pragma: no cover - interface
        """Draw the random parameters of one transform per image (from ``generator`` when given)."""
        raise NotImplementedError

    def apply(self, images: Tensor, params) -> Tensor:  # pragma: no cover - interface
        """Apply the transforms described by ``params`` (from :meth:`sample`) to ``images``."""
        raise NotImplementedError

    def __call__(self, images: Tensor, generator: torch.Generator | None = None) -> Tensor:
        return self.apply(images, self.sample(images, generator))


class ShiftFlip(Augmentation):
    """Random shift by up to ``max_shift`` pixels (or a fraction of the width) and random horizontal flip.

    The parameters come from :func:`recognition.augment.sample_shift_flip`, the project's one shift/flip
    sampler, so crafting and training augment alike.

    Args:
        max_shift: largest shift in pixels (an int, or a float ≥ 1), or a fraction of the width (a float < 1).
        flip: also flip horizontally, each image with probability 1/2.

    Shape: ``(N, C, H, W)`` → ``(N, C, H, W)``.

    Example:
        >>> x = torch.rand(2, 3, 8, 8)
        >>> aug = ShiftFlip(max_shift=4)
        >>> params = aug.sample(x, torch.Generator().manual_seed(0))
        >>> torch.equal(aug.apply(x, params), aug.apply(x, params))
        True
        >>> aug.apply(x, params).shape
        torch.Size([2, 3, 8, 8])
    """

    def __init__(self, max_shift: int | float = 0.125, flip: bool = True) -> None:
        if max_shift < 0:
            raise ValueError(f"max_shift must be >= 0, got {max_shift}")
        self.max_shift = max_shift
        self.flip = flip

    def shift_pixels(self, width: int) -> int:
        """The largest shift in pixels for images ``width`` pixels wide.

        Example:
            >>> ShiftFlip(0.125).shift_pixels(32), ShiftFlip(3).shift_pixels(32)
            (4, 3)
        """
        if isinstance(self.max_shift, float) and self.max_shift < 1:
            return int(round(self.max_shift * width))
        return int(self.max_shift)

    def sample(self, images: Tensor, generator: torch.Generator | None = None) -> ShiftFlipParams:
        """One shift and flip per image of ``images``."""
        return sample_shift_flip(images.shape[0], self.shift_pixels(images.shape[-1]), self.flip, generator)

    def apply(self, images: Tensor, params: ShiftFlipParams) -> Tensor:
        """Shift and flip each image as ``params`` say (the same params give the same result)."""
        return apply_shift_flip(images, params, self.shift_pixels(images.shape[-1]))


class Identity(Augmentation):
    """No augmentation (``none``): the images pass through unchanged."""

    def sample(self, images: Tensor, generator: torch.Generator | None = None) -> None:
        """Nothing to draw."""
        return None

    def apply(self, images: Tensor, params: None) -> Tensor:
        """The images themselves."""
        return images


AUGMENTATIONS: Registry[Augmentation] = Registry("augmentation")
AUGMENTATIONS.register("none")(Identity)
AUGMENTATIONS.register("shift_flip")(ShiftFlip)
AUGMENTATIONS.register("flip")(lambda: ShiftFlip(max_shift=0, flip=True))


def create_augmentation(name: str, **kwargs) -> Augmentation:
    """Build an augmentation by name: ``none``, ``flip`` or ``shift_flip`` (kwargs: max_shift, flip).

    Raises:
        ValueError: an unknown name (the message lists the valid ones).

    Example:
        >>> create_augmentation("shift_flip", max_shift=2).shift_pixels(32)
        2
    """
    return AUGMENTATIONS.create(name, **kwargs)



def augmentation_for(name: str, max_shift: float) -> Augmentation:
    """The augmentation a crafting config names, with its ``max_shift`` where the augmentation shifts
    (``shift_flip``); a ValueError listing the valid names otherwise."""
    return create_augmentation(name, **({"max_shift": max_shift} if name == "shift_flip" else {}))
