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


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
