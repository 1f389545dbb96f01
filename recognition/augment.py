"""Batch image augmentation used in training (and reused by the crafter's differentiable augmentation)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor


def translate(images: Tensor, shift_y: Tensor, shift_x: Tensor, max_shift: int) -> Tensor:
    """Shift each image by its own integer offset, filling with zeros (= a crop of the zero-padded image).

    Vectorised (one gather for the whole batch) and differentiable w.r.t. ``images``.

    Args:
        images: ``(N, C, H, W)``.
        shift_y, shift_x: ``(N,)`` integer shifts with |shift| ≤ ``max_shift``; positive moves content down/right.
        max_shift: the padding.
    """
    if max_shift <= 0:
        return images
    n, _, h, w = images.shape
    dev = images.device
    padded = F.pad(images, (max_shift,) * 4)
    rows = torch.arange(h, device=dev)[None, :] + max_shift - shift_y.to(dev)[:, None]
    cols = torch.arange(w, device=dev)[None, :] + max_shift - shift_x.to(dev)[:, None]
    batch = torch.arange(n, device=dev)[:, None, None]
    shifted = padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]]
    return shifted.permute(0, 3, 1, 2).contiguous()  # NCHW memory: a channels-last view slows the convs


@dataclass(frozen=True)
class ShiftFlipParams:
    """Per-sample integer shifts (pixels, may be negative) and horizontal-flip flags, replayable."""

    shift_y: Tensor
    shift_x: Tensor
    flip: Tensor


def sample_shift_flip(n: int, max_shift: int, flip: bool, generator: torch.Generator | None) -> ShiftFlipParams:
    """The one shift/flip sampler (training and crafting both draw from it), on the CPU from ``generator``.

    Shifts are uniform in [-max_shift, max_shift] (zeros, drawing nothing, when ``max_shift`` is 0); each
    image is flipped with probability 1/2 when ``flip``.
    """
    if max_shift > 0:
        shifts = torch.randint(-max_shift, max_shift + 1, (2, n), generator=generator)
    else:
        shifts = torch.zeros((2, n), dtype=torch.long)
    mask = torch.rand(n, generator=generator) < 0.5 if flip else torch.zeros(n, dtype=torch.bool)
    return ShiftFlipParams(shift_y=shifts[0], shift_x=shifts[1], flip=mask)


def apply_shift_flip(images: Tensor, params: ShiftFlipParams, max_shift: int) -> Tensor:
    """Translate each image by its integer shift (zero padding, i.e. a random crop of a padded image) and flip it
    horizontally where ``params.flip`` is set. Differentiable w.r.t. ``images``."""
    if images.ndim != 4:
        raise ValueError(f"expected NCHW images, got shape {tuple(images.shape)}")
    out = translate(images, params.shift_y, params.shift_x, max_shift)
    mask = params.flip.to(images.device)[:, None, None, None]
    return torch.where(mask, out.flip(-1), out)


def random_shift_flip(images: Tensor, padding: int, flip: bool, generator: torch.Generator) -> Tensor:
    """Training augmentation: random shift by up to ``padding`` pixels and a random horizontal flip.

    Randomness is drawn on the CPU from ``generator`` (reproducible whatever the device).
    """
    return apply_shift_flip(images, sample_shift_flip(images.shape[0], padding, flip, generator), padding)
