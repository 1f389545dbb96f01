"""Several surrogates crafted against together.

Noise that fools one surrogate may lean on what only that network learned; noise crafted against several
(other architectures, other seeds) has to work on all of them, which is how poisons are made to transfer to a
victim nobody has seen (Geiping et al. 2021, "Witches' Brew", craft against an ensemble for that reason).

In the min-min loop of :func:`facepoison.unlearnable.craft_error_minimizing` a :class:`SurrogateEnsemble` is used
member by member: the noise descends the mean of the members' training losses, every member is trained on the
poisoned set with its own loss, and the loop stops when the *least* fitted member fits. Its ``forward`` (the mean of
the members' outputs) is only for code that wants one model.

Example:
    >>> ensemble = SurrogateEnsemble([resnet18_recognizer, resnet50_recognizer])  # doctest: +SKIP
    >>> result = craft_error_minimizing(ensemble, images, labels, num_classes, config)  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn


class SurrogateEnsemble(nn.Module):
    """Surrogates with the same classes, crafted against together.

    Args:
        members: at least one model; each maps images ``(N, C, H, W)`` to ``(N, K)`` scores with the same K.
    """

    def __init__(self, members: Sequence[nn.Module]) -> None:
        super().__init__()
        if len(members) < 1:
            raise ValueError("an ensemble needs at least one surrogate")
        self.members = nn.ModuleList(members)

    def forward(self, images: Tensor) -> Tensor:
        """The mean of the members' outputs (cosines for face recognizers), ``(N, K)``."""
        return torch.stack([member(images) for member in self.members]).mean(0)


def check_ensemble_objective(name: str, error: type[Exception] = ValueError) -> None:
    """Raise ``error`` unless the objective ``name`` can be crafted against an ensemble: the min-min objectives
    (``error_min``, ``error_min_identity``), the only ones whose driver takes one."""
    from facepoison.objectives import OBJECTIVES

    objective = OBJECTIVES.get(name)
    if not (objective.dataset_level and objective.optimizes):
        raise error(f"an ensemble of surrogates works with the min-min objectives (error_min, error_min_identity), "
                    f"not {name}")


def members_of(model: nn.Module) -> list[nn.Module]:
    """The surrogates ``model`` stands for: an ensemble's members, else ``[model]``."""
    return list(model.members) if isinstance(model, SurrogateEnsemble) else [model]
