"""Data defenses: applied once to each released image, as a platform or a scraper stores it (uint8 in, uint8 out)."""

from __future__ import annotations

import io
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from facepoison.defenses.base import DEFENSES, check_images, check_quality, generator_device, int_at_least, require


def _pil_map(images: Tensor, fn: Callable[[Image.Image], Image.Image]) -> Tensor:
    """Apply a PIL ``Image -> Image`` function (same size) to each uint8 image (``L`` for C = 1, else ``RGB``)."""
    arr = images.detach().cpu().permute(0, 2, 3, 1).numpy()
    out = np.empty_like(arr)
    for i, img in enumerate(arr):
        pil = Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img)
        out[i] = np.asarray(fn(pil).convert(pil.mode)).reshape(img.shape)
    return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous().to(images.device)


def jpeg_roundtrip(images: Tensor, quality: int) -> Tensor:
    """JPEG encode/decode with Pillow (libjpeg) at ``quality``, 4:2:0 chroma subsampling (Pillow's default).

    Shape:
        ``(N, C, H, W)`` uint8 → same.
    """

    def roundtrip(pil: Image.Image) -> Image.Image:
        buf = io.BytesIO()
        pil.save(buf, format="JPEG", quality=quality, subsampling="4:2:0")
        return Image.open(io.BytesIO(buf.getvalue()))

    return _pil_map(images, roundtrip)


def resize_roundtrip(images: Tensor, size: int, down: str = "bicubic") -> Tensor:
    """Downscale so the longer side is ``size`` px with PIL ``bicubic`` (antialiased) or ``box`` (area average), then
    back up to the original size with PIL bicubic; images already no larger than ``size`` are returned unchanged.

    Shape:
        ``(N, C, H, W)`` uint8 → same.
    """
    h, w = images.shape[-2:]
    if size >= max(h, w):
        return images.clone()
    small = (max(1, round(w * size / max(h, w))), max(1, round(h * size / max(h, w))))
    resample = Image.Resampling.BICUBIC if down == "bicubic" else Image.Resampling.BOX
    return _pil_map(images, lambda p: p.resize(small, resample).resize((w, h), Image.Resampling.BICUBIC))


def luma(images: Tensor) -> Tensor:
    """ITU-R 601-2 luma exactly as PIL's ``convert("L")`` (16-bit fixed point, rounded), in every channel.

    Shape:
        ``(N, C, H, W)`` uint8 → same, all channels equal (C = 1 is returned unchanged).
    """
    if images.shape[1] == 1:
        return images.clone()
    r, g, b = images.to(torch.int32).unbind(1)
    y = (r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16
    return y.to(torch.uint8).unsqueeze(1).expand_as(images).contiguous()


def gaussian_blur(images: Tensor, sigma: float) -> Tensor:
    """Separable Gaussian blur, kernel size ``2·ceil(3σ) + 1``, reflect padding.

    Shape:
        ``(N, C, H, W)`` float → same; H and W must exceed ``ceil(3σ)``.
    """
    radius = math.ceil(3 * sigma)
    x = torch.arange(-radius, radius + 1, dtype=images.dtype, device=images.device)
    k = torch.exp(-(x**2) / (2 * sigma**2))
    k, c = k / k.sum(), images.shape[1]
    out = F.pad(images, (radius, radius, radius, radius), mode="reflect")
    out = F.conv2d(out, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(out, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def median3x3(images: Tensor) -> Tensor:
    """3×3 median filter, reflect padding.

    Shape:
        ``(N, C, H, W)`` float → same; H, W ≥ 2.
    """
    n, c, h, w = images.shape
    padded = F.pad(images, (1, 1, 1, 1), mode="reflect").reshape(n * c, 1, h + 2, w + 2)
    return F.unfold(padded, 3).median(dim=1).values.reshape(n, c, h, w)


class DataDefense:
    """Base of the ``"data"`` defenses: calling checks the uint8 contract and runs :meth:`apply`."""

    kind: ClassVar[str] = "data"

    def apply(self, images: Tensor, generator: torch.Generator | None) -> Tensor:  # pragma: no cover - interface
        """The defended images: ``(N, C, H, W)`` uint8 → same (the input is checked by ``__call__``)."""
        raise NotImplementedError

    def __call__(self, images: Tensor, generator: torch.Generator | None = None) -> Tensor:
        check_images(images, u8=True)
        return self.apply(images, generator)


@DEFENSES.register("jpeg")
@dataclass(frozen=True)
class Jpeg(DataDefense):
    """JPEG compression at ``quality`` (85, 75, 50, 10 are the usual sweep), see :func:`jpeg_roundtrip`."""

    quality: int = 75

    def __post_init__(self) -> None:
        check_quality(self.quality)

    def apply(self, images: Tensor, generator: torch.Generator | None) -> Tensor:
        return jpeg_roundtrip(images, self.quality)


@DEFENSES.register("resize")
@dataclass(frozen=True)
class Resize(DataDefense):
    """A platform's thumbnail pipeline: :func:`resize_roundtrip` to ``size`` px (``down``: ``bicubic`` or ``box``),
    then JPEG at ``jpeg_quality`` (``None``: none)."""

    size: int = 64
    down: str = "bicubic"
    jpeg_quality: int | None = 85

    def __post_init__(self) -> None:
        int_at_least(self.size, 1, "size")
        require(self.down in ("bicubic", "box"), f"down must be 'bicubic' or 'box', got {self.down!r}")
        if self.jpeg_quality is not None:
            check_quality(self.jpeg_quality, "jpeg_quality")

    def apply(self, images: Tensor, generator: torch.Generator | None) -> Tensor:
        out = resize_roundtrip(images, self.size, self.down)
        return out if self.jpeg_quality is None else jpeg_roundtrip(out, self.jpeg_quality)


@DEFENSES.register("grayscale")
@dataclass(frozen=True)
class Grayscale(DataDefense):
    """PIL ``L`` luma replicated to every channel (:func:`luma`), so a colour model still trains."""

    def apply(self, images: Tensor, generator: torch.Generator | None) -> Tensor:
        return luma(images)


@DEFENSES.register("blur")
@dataclass(frozen=True)
class Blur(DataDefense):
    """Gaussian blur of ``sigma`` px (:func:`gaussian_blur`), rounded back to uint8."""

    sigma: float = 1.0

    def __post_init__(self) -> None:
        require(self.sigma > 0, f"sigma must be > 0, got {self.sigma!r}")

    def apply(self, images: Tensor, generator: torch.Generator | None) -> Tensor:
        return gaussian_blur(images.float(), self.sigma).round().clamp(0, 255).to(torch.uint8)


@DEFENSES.register("noise")
@dataclass(frozen=True)
class Noise(DataDefense):
    """Additive Gaussian noise of std ``sigma`` in /255 units, rounded and clipped; drawn on the generator's device."""

    sigma: float = 8.0

    def __post_init__(self) -> None:
        require(self.sigma > 0, f"sigma must be > 0, got {self.sigma!r}")

    def apply(self, images: Tensor, generator: torch.Generator | None) -> Tensor:
        noise = torch.randn(images.shape, generator=generator, device=generator_device(generator)).to(images.device)
        return (images.float() + self.sigma * noise).round().clamp(0, 255).to(torch.uint8)


@DEFENSES.register("median")
@dataclass(frozen=True)
class Median(DataDefense):
    """3×3 median filter with reflect padding (:func:`median3x3`)."""

    def apply(self, images: Tensor, generator: torch.Generator | None) -> Tensor:
        return median3x3(images.float()).to(torch.uint8)


@DEFENSES.register("iss")
@dataclass(frozen=True)
class ImageShortcutSqueezing(DataDefense):
    """Image Shortcut Squeezing (Liu et al., 2023): grayscale squeezes low-frequency (colour) poisons, JPEG quality 10
    high-frequency ones. ``mode="jpeg10"`` is the default: ε-bounded L∞ poisons such as ours are high-frequency."""

    mode: str = "jpeg10"

    def __post_init__(self) -> None:
        require(self.mode in ("grayscale", "jpeg10"), f"mode must be 'grayscale' or 'jpeg10', got {self.mode!r}")

    def apply(self, images: Tensor, generator: torch.Generator | None) -> Tensor:
        return luma(images) if self.mode == "grayscale" else jpeg_roundtrip(images, 10)


def apply_data_defense(defense: DataDefense, images: Tensor, batch_size: int = 256,
                       generator: torch.Generator | None = None) -> Tensor:
    """Apply a ``"data"`` defense to a uint8 image set, ``batch_size`` images at a time.

    Shape:
        ``(N, C, H, W)`` uint8 → same.
    """
    require(getattr(defense, "kind", None) == "data", f"{type(defense).__name__} is not a data defense")
    check_images(images, u8=True)
    parts = [defense(images[i : i + batch_size], generator) for i in range(0, images.shape[0], batch_size)]
    return torch.cat(parts) if parts else images.clone()
