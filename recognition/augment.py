"""Batch image augmentation used in training (and reused by the crafter's differentiable augmentation)."""

from __future__ import annotations

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


def random_shift_flip(images: Tensor, padding: int, flip: bool, generator: torch.Generator) -> Tensor:
    """Training augmentation: random shift by up to ``padding`` pixels and a random horizontal flip.

    Randomness is drawn on the CPU from ``generator`` (reproducible whatever the device).
    """
    n = images.shape[0]
    if padding > 0:
        shifts = torch.randint(-padding, padding + 1, (2, n), generator=generator)
        images = translate(images, shifts[0], shifts[1], padding)
    if flip:
        mask = (torch.rand(n, generator=generator) < 0.5).to(images.device)[:, None, None, None]
        images = torch.where(mask, images.flip(-1), images)
    return images
