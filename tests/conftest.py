from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn


class TinyNet(nn.Module):
    """A small conv net with BatchNorm: enough structure for double backward, fast on CPU."""

    def __init__(self, num_classes: int = 3, channels: int = 4) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, channels, 3, padding=1)
        self.bn = nn.BatchNorm2d(channels)
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.bn(self.conv(x)))  # smooth, so gradcheck sees no kinks
        return self.fc(h.mean(dim=(2, 3)))


@pytest.fixture
def tiny_model() -> nn.Module:
    torch.manual_seed(0)
    model = TinyNet()
    with torch.no_grad():  # non-trivial running statistics
        model.bn.running_mean.uniform_(-0.2, 0.2)
        model.bn.running_var.uniform_(0.5, 1.5)
    return model.eval()


@pytest.fixture
def tiny_batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.rand(6, 3, 8, 8, generator=g), torch.randint(0, 3, (6,), generator=g)


def write_image_folder(
    root: Path, classes: int = 2, per_class: int = 6, size: int = 16, splits: tuple[str, ...] = ("train", "test")
) -> Path:
    """An ImageFolder tree of small random PNGs (JPEG for odd indices, to cover both decoders)."""
    rng = np.random.default_rng(0)
    for split in splits:
        for c in range(classes):
            folder = root / split / f"class{c}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
                pixels[..., c % 3] = np.clip(pixels[..., c % 3].astype(int) + 80, 0, 255)  # learnable signal
                ext = "png" if i % 2 == 0 else "jpg"
                Image.fromarray(pixels).save(folder / f"img{i:03d}.{ext}")
    return root


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    return write_image_folder(tmp_path / "data")


def write_face_set(path: Path, identities: int = 4, per_identity: int = 6, seed: int = 0) -> Path:
    """A prepared face set (FACES.h5) of random 112×112 faces with an identity-specific tint."""
    from recognition.faceset import FaceRecord, assemble, encode_jpeg, write_journal_batch

    rng = np.random.default_rng(seed)
    names = [f"id{k:02d}" for k in range(identities)]
    records = []
    for k, name in enumerate(names):
        for i in range(per_identity):
            pixels = rng.integers(0, 200, (112, 112, 3), dtype=np.uint8)
            pixels[..., k % 3] += 55
            records.append(FaceRecord(path=f"{name}/{i:03d}.jpg", identity=name, jpeg=encode_jpeg(pixels, 90)))
    write_journal_batch(path, 0, records)
    assemble(path, names, {"layout": "folders", "source": "synthetic", "quality": 90})
    return path


def write_face_checkpoint(path: Path, num_classes: int = 4, seed: int = 0, width: int = 4) -> Path:
    """An untrained tiny CosFace recognizer saved as ``facepoison train`` would."""
    from recognition.checkpoint import save_checkpoint
    from recognition.heads import create_recognizer

    torch.manual_seed(seed)
    model = create_recognizer("resnet18", num_classes, width=width, embedding_size=32)
    meta = {"kind": "face", "model": "resnet18", "width": width, "num_classes": num_classes,
            "classes": [f"id{k:02d}" for k in range(num_classes)], "embedding_size": 32, "dropout": 0.0,
            "cosface_s": 64.0, "cosface_m": 0.35, "stem_stride": 1, "config": {}}
    save_checkpoint(path, model.eval(), meta)
    return path


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
