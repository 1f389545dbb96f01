"""The surrogate of ``facepoison protect``: a face recognizer whose CosFace head gets the user's identities
appended by *imprinting* (each identity's class weight is the normalized mean embedding of its faces), and
which crafts the perturbations of a batch of aligned faces.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from facepoison.crafter import CrafterConfig, PoisonCrafter
from facepoison.errors import UsageError
from facepoison.objectives import create_objective
from facepoison.provenance import file_sha256
from facepoison.runtime import load_classifier
from facepoison.unlearnable import MinMinConfig, craft_error_minimizing
from recognition.embed import ArrayFaces, embed_dataset
from recognition.heads import CosFaceHead, FaceRecognizer

DEFAULT_SURROGATE = Path(__file__).resolve().parent.parent / "weights" / "default_surrogate.pt"
IDENTITY_MODES = ("folder", "auto", "single")
# `auto`: faces closer than this cosine distance (average linkage) are one person.
AUTO_DISTANCE = 0.6


class Surrogate:
    """A face recognizer (from ``facepoison train``, or the bundled one) that crafts against imprinted identities.

    Args:
        path: the checkpoint; a one-line UsageError when it is missing, broken or not a face recognizer.
        device: where embeddings and crafting run.
    """

    def __init__(self, path: str | Path, device: torch.device) -> None:
        if not Path(path).is_file():
            raise UsageError(f"surrogate {path} does not exist")
        model, meta = load_classifier(path, kind="face")
        self.model = model.float().eval().to(device)
        self.meta = meta
        self.device = device
        self.sha256 = file_sha256(path)
        self.base_weight = F.normalize(self.model.head.weight.detach(), dim=1)

    def embed(self, faces: np.ndarray, batch_size: int = 64) -> np.ndarray:
        """Normalized flip-TTA embeddings of aligned uint8 faces.

        Shape: ``(N, 112, 112, 3)`` uint8 → ``(N, D)`` float32.
        """
        if len(faces) == 0:
            return np.zeros((0, self.base_weight.shape[1]), np.float32)
        return embed_dataset(self.model, ArrayFaces(faces), batch_size=batch_size, device=self.device)

    def with_identities(self, centers: np.ndarray) -> FaceRecognizer:
        """The surrogate with ``centers`` appended to its head as classes ``K, K+1, ...``."""
        head = CosFaceHead(self.base_weight.shape[1], len(self.base_weight) + len(centers),
                           s=self.model.head.s, m=self.model.head.m).to(self.device)
        with torch.no_grad():
            head.weight.copy_(torch.cat([self.base_weight, torch.from_numpy(centers).to(self.device)]))
        return FaceRecognizer(self.model.backbone, head).eval()

    def craft(self, faces: np.ndarray, centers: np.ndarray, labels: np.ndarray, eps: float, steps: int,
              seed: int, objective: str = "alignment", chroma: float = 1.0) -> np.ndarray:
        """Perturbations of faces labelled by imprinted centers, in pixel units.

        Shapes: faces ``(N, 112, 112, 3)`` uint8, centers ``(U, D)``, labels ``(N,)`` in ``[0, U)`` →
        ``(N, 112, 112, 3)`` float in [-ε, ε] (ε in /255 units).
        """
        model = self.with_identities(centers)
        # contiguous NCHW: a channels-last input crashes the CPU double backward (memory corruption seen)
        x = torch.from_numpy(faces).to(self.device).permute(0, 3, 1, 2).float().div(255).contiguous()
        y = torch.from_numpy(labels).to(self.device).long() + len(self.base_weight)
        obj = create_objective(objective, independent=True)
        if obj.dataset_level:  # error-minimizing noise on the fixed surrogate (identity-wise: one pattern per label)
            config = MinMinConfig(eps=eps, noise_steps=steps, train_steps=0, max_rounds=1, classwise=obj.classwise,
                                  batch_size=min(len(x), 32), seed=seed, chroma=chroma)
            delta = craft_error_minimizing(model, x, y.cpu(), len(self.base_weight) + len(centers), config,
                                           device=self.device, in_place=True).delta
        else:
            obj.prepare(model, [(x, y)], device=self.device)  # the target gradient of this batch's clean faces
            config = CrafterConfig(eps=eps, steps=steps, restarts=1, independent=True, seed=seed, chroma=chroma)
            crafter = PoisonCrafter(model, obj, config, device=self.device)
            delta = crafter(x, y, torch.Generator().manual_seed(seed)).delta
        return (delta * 255).permute(0, 2, 3, 1).cpu().numpy()


def imprint_centers(mode: str, groups: list[str], embeddings: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Class centers and the label of each face, for faces with the given identity groups.

    ``folder``: one class per group; ``auto``: average-linkage clusters of the embeddings (cosine distance
    ``AUTO_DISTANCE``), groups ignored; ``single``: one class per face.

    Shapes: groups ``N`` names, embeddings ``(N, D)`` → centers ``(U, D)`` normalized, labels ``(N,)``.

    Example:
        >>> import numpy as np
        >>> centers, labels = imprint_centers("folder", ["a", "b", "a"], np.eye(3, dtype=np.float32))
        >>> labels.tolist(), centers.shape
        ([0, 1, 0], (2, 3))
    """
    if len(embeddings) == 0:
        return np.zeros((0, 0), np.float32), np.zeros(0, np.int64)
    if mode == "single":
        labels = np.arange(len(embeddings))
    elif mode == "folder":
        names = sorted(set(groups))
        labels = np.array([names.index(g) for g in groups])
    elif mode == "auto":
        if len(embeddings) == 1:
            labels = np.zeros(1, np.int64)
        else:
            from sklearn.cluster import AgglomerativeClustering

            labels = AgglomerativeClustering(n_clusters=None, metric="cosine", linkage="average",
                                             distance_threshold=AUTO_DISTANCE).fit_predict(embeddings)
    else:
        raise ValueError(f"unknown identities mode {mode!r}; valid: {', '.join(IDENTITY_MODES)}")
    centers = np.stack([embeddings[labels == k].mean(0) for k in range(labels.max() + 1)])
    centers /= np.maximum(np.linalg.norm(centers, axis=1, keepdims=True), 1e-12)
    return centers.astype(np.float32), labels.astype(np.int64)
