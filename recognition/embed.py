"""Face embeddings: L2-normalized, with the horizontally flipped image's embedding added (flip TTA)."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from recognition.atomic import atomic_path


@torch.no_grad()
def embed_dataset(
    model: nn.Module, dataset: Dataset, batch_size: int = 128, device: str | torch.device = "cpu", flip: bool = True,
    progress=None,
) -> np.ndarray:
    """``(N, D)`` float32 embeddings of a dataset of ``(uint8 image, label)``, in order.

    Each embedding is normalize(f(x) + f(flip(x))) with flip TTA, else normalize(f(x)). ``model`` is a
    :class:`~recognition.heads.FaceRecognizer` (its ``backbone`` is used) or a bare backbone.
    """
    device = torch.device(device)
    backbone = getattr(model, "backbone", model).to(device).eval()
    out = []
    for images, _ in DataLoader(dataset, batch_size=batch_size, shuffle=False):
        x = images.to(device).float().div_(255)
        e = backbone(x)
        if flip:
            e = e + backbone(x.flip(-1))
        out.append(F.normalize(e.float(), dim=1).cpu().numpy())
        if progress is not None:
            progress(len(images))
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


class ArrayFaces(Dataset):
    """Aligned uint8 faces ``(N, H, W, 3)`` as a dataset of ``(uint8 (3, H, W), 0)`` for :func:`embed_dataset`."""

    def __init__(self, faces: np.ndarray) -> None:
        self.faces = faces

    def __len__(self) -> int:
        return len(self.faces)

    def __getitem__(self, i: int):
        return torch.from_numpy(self.faces[i]).permute(2, 0, 1), 0


def save_embeddings(path: str | Path, embeddings: np.ndarray, labels: np.ndarray, **attrs) -> None:
    """Write embeddings and labels to HDF5 (temporary name, then rename)."""
    path = Path(path)
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        f.create_dataset("embeddings", data=embeddings.astype(np.float32))
        f.create_dataset("labels", data=np.asarray(labels))
        f.attrs.update(attrs)


def load_embeddings(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    with h5py.File(path, "r") as f:
        return f["embeddings"][:], f["labels"][:]
