"""facepoison: alignment poisoning for secure release of (face) image datasets.

The crafting core follows Fowl et al., "Preventing unauthorized use of proprietary data: poisoning for
secure dataset release". Public tensors are images in [0, 1], NCHW, float; ε is given in /255 units.

The photo-protection API, :class:`~facepoison.protect.engine.Protector` (and its
:class:`~facepoison.protect.engine.ProtectSettings`), is exported here too, but imported only when first used,
so ``import facepoison`` does not load the face detector's and the image libraries' dependencies.

Example:
    >>> from facepoison import Protector                                  # doctest: +SKIP
    >>> protected, record = Protector(strength="low").protect(photo)      # doctest: +SKIP
"""

from facepoison.crafter import CrafterConfig, PoisonCrafter
from facepoison.losses import alignment_loss, reverse_cross_entropy, target_gradient
from facepoison.objectives import OBJECTIVES, create_objective

__all__ = [
    "OBJECTIVES",
    "CrafterConfig",
    "PoisonCrafter",
    "ProtectSettings",
    "Protector",
    "alignment_loss",
    "create_objective",
    "reverse_cross_entropy",
    "target_gradient",
]
__version__ = "0.1.0"

_LAZY = {"Protector": "facepoison.protect.engine", "ProtectSettings": "facepoison.protect.engine"}


def __getattr__(name: str):
    """``facepoison.Protector`` and ``facepoison.ProtectSettings``, imported on first access (PEP 562)."""
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'facepoison' has no attribute {name!r}")
