"""Classifiers built by name from a registry (timm's ``create_model`` pattern).

Every model takes images in [0, 1], NCHW, and normalizes them in its first layer, so the crafter and
the victim never normalize data themselves.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from recognition.registry import Registry

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class Normalize(nn.Module):
    """(x - mean) / std per channel, as a layer with buffers (moves with the model, saved in its state)."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.mean) / self.std


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=False)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        out_planes = planes * self.expansion
        self.conv1 = nn.Conv2d(in_planes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out_planes, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_planes)
        self.relu = nn.ReLU(inplace=False)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != out_planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, out_planes, 1, stride, bias=False), nn.BatchNorm2d(out_planes)
            )

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet with the CIFAR stem (3×3 conv, stride 1, no max-pool) for small images.

    Args:
        block: ``BasicBlock`` or ``Bottleneck``.
        layers: blocks per stage.
        num_classes: output classes.
        width: channels of the first stage (64 is the standard network; 16 is a CPU-sized one).
    """

    def __init__(self, block: type, layers: Sequence[int], num_classes: int, width: int = 64) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=False)
        stages, in_planes = [], width
        for i, n in enumerate(layers):
            planes = width * 2**i
            blocks = []
            for j in range(n):
                blocks.append(block(in_planes, planes, stride=2 if (i > 0 and j == 0) else 1))
                in_planes = planes * block.expansion
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_planes, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.pool(x), 1))


MODELS: Registry[nn.Module] = Registry("model")
MODELS.register("resnet18")(lambda num_classes, width=64: CifarResNet(BasicBlock, (2, 2, 2, 2), num_classes, width))
MODELS.register("resnet34")(lambda num_classes, width=64: CifarResNet(BasicBlock, (3, 4, 6, 3), num_classes, width))
MODELS.register("resnet50")(lambda num_classes, width=64: CifarResNet(Bottleneck, (3, 4, 6, 3), num_classes, width))


def list_models() -> list[str]:
    """Names accepted by :func:`create_model`: the CIFAR-stem ResNets, then ``tv:<name>`` for every
    torchvision classifier."""
    import torchvision

    return MODELS.names() + [f"tv:{n}" for n in torchvision.models.list_models(module=torchvision.models)]


def default_normalization(name: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) a model is built with by default: ImageNet statistics for torchvision models, CIFAR's else."""
    return (IMAGENET_MEAN, IMAGENET_STD) if name.startswith("tv:") else (CIFAR_MEAN, CIFAR_STD)


def create_model(
    name: str,
    num_classes: int,
    width: int = 64,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> nn.Module:
    """Build a classifier for images in [0, 1] with normalization as its first layer.

    Args:
        name: ``resnet18``/``resnet34``/``resnet50`` (CIFAR stem, for small images) or ``tv:<name>`` for a
            torchvision classifier built from scratch (``tv:resnet18``, ``tv:mobilenet_v3_small``, …).
        num_classes: number of classes.
        width: first-stage width of the CIFAR ResNets (ignored for torchvision models).
        mean, std: per-channel normalization; :func:`default_normalization` when not given.

    Raises:
        ValueError: unknown name (the message lists the valid ones).
    """
    if name.startswith("tv:"):
        import torchvision

        tv_name = name[3:]
        valid = torchvision.models.list_models(module=torchvision.models)
        if tv_name not in valid:
            raise ValueError(f"unknown model {name!r}; valid: {', '.join(MODELS.names())}, or tv:<name> with "
                             f"<name> a torchvision classifier (e.g. tv:resnet18)")
        net = torchvision.models.get_model(tv_name, weights=None, num_classes=num_classes)
    elif name in MODELS:
        if width < 1:
            raise ValueError(f"width must be >= 1, got {width}")
        net = MODELS.create(name, num_classes=num_classes, width=width)
    else:
        raise ValueError(f"unknown model {name!r}; valid: {', '.join(MODELS.names())}, or tv:<torchvision name>")
    default_mean, default_std = default_normalization(name)
    return nn.Sequential(Normalize(mean or default_mean, std or default_std), net)
