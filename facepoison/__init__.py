"""facepoison: alignment poisoning for secure release of (face) image datasets.

The crafting core follows Fowl et al., "Preventing unauthorized use of proprietary data: poisoning for
secure dataset release". Public tensors are images in [0, 1], NCHW, float; ε is given in /255 units.
"""

from facepoison.crafter import CrafterConfig, PoisonCrafter
from facepoison.losses import alignment_loss, reverse_cross_entropy, target_gradient
from facepoison.objectives import OBJECTIVES, create_objective

__all__ = [
    "OBJECTIVES",
    "CrafterConfig",
    "PoisonCrafter",
    "alignment_loss",
    "create_objective",
    "reverse_cross_entropy",
    "target_gradient",
]
__version__ = "0.1.0"
