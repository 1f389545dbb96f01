"""Differentiable augmentation for crafting, with replayable random parameters.

Randomness comes from outside (a ``torch.Generator``); ``sample`` draws the parameters and ``apply``
replays them, so the exact same transform can be applied twice (kornia's convention).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from facepoison.registry import Registry
from recognition.augment import translate


@dataclass(frozen=True)
class ShiftFlipParams:
    """Per-sample integer shifts (pixels, may be negative) and horizontal-flip flags."""

    shift_y: Tensor
    shift_x: Tensor
    flip: Tensor


def shift_flip(images: Tensor, params: ShiftFlipParams, max_shift: int) -> Tensor:
    """Translate each image by its integer shift (zero padding, i.e. a random crop of a padded image)
    and flip it horizontally where ``params.flip`` is set. Differentiable w.r.t. ``images``."""
    if images.ndim != 4:
        raise ValueError(f"expected NCHW images, got shape {tuple(images.shape)}")
    out = translate(images, params.shift_y, params.shift_x, max_shift)
    flip = params.flip.to(images.device)[:, None, None, None]
    return torch.where(flip, out.flip(-1), out)


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
        n = images.shape[0]
        s = self.shift_pixels(images.shape[-1])
        shifts = torch.randint(-s, s + 1, (2, n), generator=generator)
        flip = torch.rand(n, generator=generator) < 0.5 if self.flip else torch.zeros(n, dtype=torch.bool)
        return ShiftFlipParams(shift_y=shifts[0], shift_x=shifts[1], flip=flip)

    def apply(self, images: Tensor, params: ShiftFlipParams) -> Tensor:
        return shift_flip(images, params, self.shift_pixels(images.shape[-1]))


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
