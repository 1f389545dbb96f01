"""Shortcut patterns: one fixed random pattern per identity (the ``synthetic_identity`` objective).

Identity-wise patterns that are linearly separable are learned by a victim instead of the faces (Yu et al. 2022,
"Availability Attacks Create Shortcuts"; their patches are Gaussian draws rescaled to ε, ours sit at the corners of
the ε-ball, like the ``random`` baseline). Nothing is optimised and no surrogate is used, so drawing them is free.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

PATCH = 8
"""Side of the blocks of one sign, in pixels (14×14 blocks per channel on a 112×112 face)."""


def patterns(identities: Sequence[int], shape: Sequence[int], eps: float, seed: int, patch: int = PATCH) -> Tensor:
    """The pattern of each identity index: ±ε per ``patch``×``patch`` block and channel, drawn from ``seed`` and
    the index, so the same identity always gets the same pattern.

    Shape:
        ``identities`` N indices, ``shape`` (C, H, W) → ``(N, C, H, W)`` float in {−ε, +ε} (ε in [0, 1] units).

    Example:
        >>> a = patterns([3, 4, 3], (3, 16, 16), 8 / 255, seed=0)
        >>> bool((a[0] == a[2]).all()), bool((a[0] == a[1]).all()), tuple(a.shape)
        (True, False, (3, 3, 16, 16))
    """
    c, h, w = (int(v) for v in shape)
    gh, gw = -(-h // patch), -(-w // patch)
    out = torch.empty(len(identities), c, h, w)
    for i, ident in enumerate(identities):
        g = torch.Generator().manual_seed(int(seed) * 1_000_003 + int(ident))
        signs = torch.randint(0, 2, (c, gh, gw), generator=g).float() * 2 - 1
        out[i] = signs.repeat_interleave(patch, 1).repeat_interleave(patch, 2)[:, :h, :w] * eps
    return out
