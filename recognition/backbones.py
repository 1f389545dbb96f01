"""Face-recognition backbones for 112×112 aligned faces, built by name from a registry.

The usual face-recognition ResNet (insightface's ``iresnet``): a stride-1 3×3 stem that keeps spatial
detail, pre-activation-style blocks (BN-conv-BN-PReLU-conv-BN) with the stride in the first block of each
stage, and an embedding head BN → dropout → FC → BN to a 512-d vector (7×7 feature map at 112×112).
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from recognition.models import Normalize
from recognition.registry import Registry

FACE_MEAN = (0.5, 0.5, 0.5)
FACE_STD = (0.5, 0.5, 0.5)


class FaceBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.BatchNorm2d(in_planes),
            nn.Conv2d(in_planes, planes, 3, 1, 1, bias=False),
            nn.BatchNorm2d(planes),
            nn.PReLU(planes),
            nn.Conv2d(planes, planes, 3, stride, 1, bias=False),
            nn.BatchNorm2d(planes),
        )
        self.shortcut = nn.Identity()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))

    def forward(self, x: Tensor) -> Tensor:
        return self.body(x) + self.shortcut(x)


class FaceResNet(nn.Module):
    """Face ResNet for 112×112 inputs in [0, 1] (normalization is its first layer).

    Args:
        layers: blocks per stage, e.g. (2, 2, 2, 2) for ResNet-18, (3, 4, 14, 3) for ResNet-50.
        width: channels of the first stage (64 is the standard network; smaller for CPU-sized runs).
        embedding_size: output dimension.
        dropout: dropout before the FC layer.
        input_size: side of the square input (112).
        stem_stride: 1 (the standard network) or 2 (a quarter of the compute: the CPU-sized default surrogate).
    """

    def __init__(
        self, layers: Sequence[int], width: int = 64, embedding_size: int = 512, dropout: float = 0.0,
        input_size: int = 112, stem_stride: int = 1,
    ) -> None:
        super().__init__()
        self.normalize = Normalize(FACE_MEAN, FACE_STD)
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, stem_stride, 1, bias=False), nn.BatchNorm2d(width),
                                  nn.PReLU(width))
        stages, in_planes = [], width
        for i, n in enumerate(layers):
            planes = width * 2**i
            blocks = [FaceBlock(in_planes, planes, 2)] + [FaceBlock(planes, planes, 1) for _ in range(n - 1)]
            stages.append(nn.Sequential(*blocks))
            in_planes = planes
        self.stages = nn.Sequential(*stages)
        side = (input_size - 1) // stem_stride + 1
        for _ in layers:
            side = (side - 1) // 2 + 1
        self.head = nn.Sequential(
            nn.BatchNorm2d(in_planes),
            nn.Dropout(dropout),
            nn.Flatten(),
            nn.Linear(in_planes * side * side, embedding_size),
            nn.BatchNorm1d(embedding_size),
        )
        self.embedding_size = embedding_size

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.stages(self.stem(self.normalize(x))))


BACKBONES: Registry[nn.Module] = Registry("backbone")
BACKBONES.register("resnet18")(lambda **kw: FaceResNet((2, 2, 2, 2), **kw))
BACKBONES.register("resnet34")(lambda **kw: FaceResNet((3, 4, 6, 3), **kw))
BACKBONES.register("resnet50")(lambda **kw: FaceResNet((3, 4, 14, 3), **kw))


def create_backbone(name: str, width: int = 64, embedding_size: int = 512, dropout: float = 0.0,
                    input_size: int = 112, stem_stride: int = 1) -> nn.Module:
    """Build a face backbone by name (``resnet18``, ``resnet34``, ``resnet50``).

    Raises:
        ValueError: unknown name (the message lists the valid ones) or a bad width.
    """
    builder = BACKBONES.get(name)
    if width < 1:
        raise ValueError(f"width must be >= 1, got {width}")
    if stem_stride not in (1, 2):
        raise ValueError(f"stem_stride must be 1 or 2, got {stem_stride}")
    return builder(width=width, embedding_size=embedding_size, dropout=dropout, input_size=input_size,
                            stem_stride=stem_stride)
