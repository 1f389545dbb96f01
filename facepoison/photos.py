"""Reading and writing user photos for ``facepoison protect``: pixels in, the same kind of file out.

- The EXIF orientation is applied on reading (the saved file is upright and its orientation tag reset).
- Colour mode is kept: grayscale stays grayscale (``L``/``LA``), RGBA keeps its alpha untouched. Palette
  images (``P``) come back as RGB(A), CMYK as RGB; 16-bit and float images are refused.
- Metadata is kept (EXIF, ICC profile, DPI, PNG text) except the GPS block, dropped unless asked otherwise.
- JPEG stays JPEG (quality 95, 4:4:4 chroma by default); PNG, TIFF, BMP and WebP are written losslessly.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps, PngImagePlugin

from recognition.atomic import atomic_path
from recognition.checkpoint import first_line

ORIENTATION_TAG = 0x0112
GPS_IFD_TAG = 0x8825
LOSSLESS_FORMATS = {"PNG", "TIFF", "BMP", "WEBP"}
WRITABLE_FORMATS = LOSSLESS_FORMATS | {"JPEG"}
SUFFIX = {"JPEG": ".jpg", "PNG": ".png", "TIFF": ".tif", "BMP": ".bmp", "WEBP": ".webp"}


class PhotoError(Exception):
    """A photo that cannot be protected (unreadable, truncated, unsupported); the message is the reason."""


@dataclass
class Photo:
    """An upright photo.

    Attributes:
        rgb: ``(H, W, 3)`` uint8 pixels for detection and crafting (grayscale replicated to 3 channels).
        gray: True if the photo is grayscale (the output keeps one channel).
        alpha: ``(H, W)`` uint8 alpha channel, or None; written back unchanged.
        format: the file's format (``JPEG``, ``PNG``, …).
        meta: what :func:`write_photo` passes back to Pillow (exif bytes, icc_profile, dpi, PNG text).
        note: a remark for the manifest (e.g. ``palette image written as RGB``), or ``""``.
    """

    rgb: np.ndarray
    gray: bool
    alpha: np.ndarray | None
    format: str
    meta: dict[str, Any] = field(default_factory=dict)
    note: str = ""

    def pixels(self) -> np.ndarray:
        """The colour pixels as they would be saved: ``(H, W)`` for grayscale, ``(H, W, 3)`` otherwise."""
        return self.rgb[..., 0] if self.gray else self.rgb


def read_photo(path: str | Path, keep_gps: bool = False) -> Photo:
    """Decode a photo, apply its EXIF orientation and collect the metadata to write back.

    Raises:
        PhotoError: not an image, truncated, or an unsupported pixel format (the message is the reason).
    """
    try:
        with Image.open(path) as im:
            fmt = im.format or ""
            im.load()
            exif = im.getexif()
            info = dict(im.info)
            upright = ImageOps.exif_transpose(im)
    except (OSError, ValueError, Image.DecompressionBombError, SyntaxError) as exc:
        message = first_line(exc)
        if "cannot identify image file" in message:
            message = "not an image"
        raise PhotoError(message) from exc
    if fmt not in WRITABLE_FORMATS and fmt != "GIF":
        raise PhotoError(f"unsupported image format {fmt or 'unknown'}")
    note = ""
    mode = upright.mode
    if mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        raise PhotoError(f"unsupported pixel mode {mode} (16-bit or float images)")
    if mode == "1":
        upright, note = upright.convert("L"), "1-bit image written as 8-bit grayscale"
    elif mode in ("P", "PA"):
        has_alpha = "transparency" in info or mode == "PA"
        upright = upright.convert("RGBA" if has_alpha else "RGB")
        note = f"palette image written as {upright.mode}"
    elif mode in ("CMYK", "YCbCr", "LAB", "HSV"):
        upright, note = upright.convert("RGB"), f"{mode} image written as RGB"
    mode = upright.mode
    arr = np.asarray(upright)
    gray = mode in ("L", "LA")
    alpha = None
    if mode in ("LA", "RGBA"):
        alpha = np.ascontiguousarray(arr[..., -1])
        arr = arr[..., :-1]
    if gray:
        arr = arr if arr.ndim == 2 else arr[..., 0]
        rgb = np.repeat(arr[..., None], 3, axis=2)
    else:
        rgb = np.ascontiguousarray(arr[..., :3])
    exif.pop(ORIENTATION_TAG, None)
    if not keep_gps:
        exif.pop(GPS_IFD_TAG, None)
    meta: dict[str, Any] = {"exif": exif.tobytes()} if len(exif) else {}
    for key in ("icc_profile", "dpi"):
        if info.get(key):
            meta[key] = info[key]
    text = {k: v for k, v in info.items() if isinstance(v, str) and k not in ("exif", "icc_profile")}
    if fmt == "PNG" and text:
        meta["text"] = text
    return Photo(rgb=rgb, gray=gray, alpha=alpha, format=fmt, meta=meta, note=note)


def output_format(photo: Photo, force_png: bool) -> str:
    """The Pillow format a protected photo is saved in: its own, or PNG when forced or for GIFs."""
    if force_png or photo.format == "GIF":  # a palette cannot carry the perturbation: GIF becomes PNG
        return "PNG"
    return photo.format


def to_image(photo: Photo, pixels: np.ndarray) -> Image.Image:
    """A Pillow image of ``pixels`` (the photo's colour channels) with the photo's alpha put back."""
    if photo.gray:
        channels = pixels if pixels.ndim == 2 else pixels[..., 0]
        if photo.alpha is not None:
            return Image.fromarray(np.stack([channels, photo.alpha], axis=2), "LA")
        return Image.fromarray(channels, "L")
    if photo.alpha is not None:
        return Image.fromarray(np.concatenate([pixels, photo.alpha[..., None]], axis=2), "RGBA")
    return Image.fromarray(pixels, "RGB")


def write_photo(photo: Photo, pixels: np.ndarray, path: str | Path, fmt: str, jpeg_quality: int = 95) -> None:
    """Save atomically (temporary name in the same folder, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image = to_image(photo, pixels)
    kwargs: dict[str, Any] = {k: v for k, v in photo.meta.items() if k in ("exif", "icc_profile", "dpi")}
    if fmt == "JPEG":
        if image.mode in ("RGBA", "LA"):
            raise PhotoError("JPEG cannot hold an alpha channel")
        kwargs.update(quality=jpeg_quality, subsampling=0, optimize=True)
    elif fmt == "PNG":
        if photo.meta.get("text"):
            info = PngImagePlugin.PngInfo()
            for k, v in photo.meta["text"].items():
                info.add_text(k, v)
            kwargs["pnginfo"] = info
    elif fmt == "WEBP":
        kwargs.update(lossless=True, quality=100)
    elif fmt == "TIFF":
        kwargs.update(compression="tiff_lzw")
    with atomic_path(path, hidden=True) as tmp:
        image.save(tmp, format=fmt, **kwargs)


def read_back(path: str | Path, photo: Photo) -> tuple[np.ndarray, np.ndarray | None]:
    """The saved file's colour pixels (in the photo's layout) and alpha, for the bound check."""
    with Image.open(path) as im:
        im.load()
        arr = np.asarray(im)
    alpha = None
    if im.mode in ("LA", "RGBA"):
        alpha, arr = arr[..., -1], arr[..., :-1]
    if photo.gray:
        return (arr if arr.ndim == 2 else arr[..., 0]), alpha
    return arr[..., :3], alpha
