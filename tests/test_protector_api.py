"""The public Python API: ``from facepoison import Protector`` on PIL images and numpy arrays.

A tiny untrained face recognizer stands in for the surrogate, and the public-domain astronaut photo
(``examples/astronaut.png``, resized to 250 px) and its flipped and rotated variants are the faces.
"""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import write_face_checkpoint

ASTRONAUT = Path(__file__).resolve().parent.parent / "examples" / "astronaut.png"
SIZE = (250, 250)


@pytest.fixture(scope="module")
def protector(tmp_path_factory):
    from facepoison import Protector

    sur = write_face_checkpoint(tmp_path_factory.mktemp("protector") / "sur.pt")
    return Protector(surrogate=sur, strength="low", device="cpu")


@pytest.fixture(scope="module")
def photo() -> Image.Image:
    return Image.open(ASTRONAUT).convert("RGB").resize(SIZE, Image.Resampling.BICUBIC)


def linf(a, b) -> int:
    return int(np.abs(np.asarray(a).astype(np.int16) - np.asarray(b).astype(np.int16)).max())


def check_protected(record: dict, bound: int) -> None:
    assert record["status"] == "protected" and record["faces"] >= 1
    assert 0 < record["linf"] <= bound and record["bound"] == bound
    assert math.isfinite(record["psnr"]) and 0.5 < record["ssim"] <= 1.0


def test_import_is_lazy_and_public():
    code = ("import sys, facepoison; assert 'facepoison.protect' not in sys.modules and 'cv2' not in sys.modules; "
            "from facepoison import Protector, ProtectSettings; import facepoison.protect as p; "
            "assert Protector is p.Protector and ProtectSettings is p.ProtectSettings")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parent.parent)
    import facepoison

    with pytest.raises(AttributeError, match="no attribute 'Protecter'"):
        facepoison.Protecter  # noqa: B018


def test_pil_rgb_same_size_and_mode_within_eps(protector, photo):
    out, record = protector.protect(photo)
    bound = round(protector.settings.eps)
    assert bound == 4  # strength "low"
    assert isinstance(out, Image.Image) and out.size == photo.size and out.mode == "RGB"
    check_protected(record, bound)
    assert linf(out, photo) == record["linf"]
    assert record["eps"] == 4.0 and record["surrogate_sha256"] == protector.surrogate.sha256
    assert record["objective"] == "error_min_identity" and record["chroma"] == 0.5


def test_numpy_in_numpy_out(protector, photo):
    pixels = np.asarray(photo)
    out, record = protector.protect(pixels)
    assert isinstance(out, np.ndarray) and out.dtype == np.uint8 and out.shape == pixels.shape
    check_protected(record, 4)
    assert linf(out, pixels) == record["linf"]


def test_grayscale_stays_grayscale(protector, photo):
    gray = photo.convert("L")
    out, record = protector.protect(gray)
    assert out.mode == "L" and out.size == gray.size
    check_protected(record, 4)
    arr, _ = protector.protect(np.asarray(gray))
    assert arr.ndim == 2 and arr.shape == np.asarray(gray).shape


def test_rgba_keeps_its_alpha(protector, photo):
    rgba = photo.copy()
    alpha = Image.linear_gradient("L").resize(SIZE)
    rgba.putalpha(alpha)
    out, record = protector.protect(rgba)
    assert out.mode == "RGBA" and out.size == rgba.size
    assert np.array_equal(np.asarray(out.getchannel("A")), np.asarray(alpha))
    check_protected(record, 4)
    assert linf(out.convert("RGB"), photo) <= 4


def test_protect_batch_with_identities(protector, photo):
    images = [photo, photo.transpose(Image.Transpose.FLIP_LEFT_RIGHT),
              photo.rotate(8, fillcolor=(128, 128, 128))]
    results = protector.protect_batch(images, identities=["ann", "ann", "bob"])
    assert len(results) == 3
    for (out, record), image in zip(results, images, strict=True):
        assert out.size == image.size and out.mode == image.mode
        check_protected(record, 4)
        assert linf(out, image) == record["linf"]
    with pytest.raises(ValueError, match="identities"):
        protector.protect_batch(images, identities=["ann"])


# an unchanged image has an infinite PSNR; skimage warns about the division by zero on the way
@pytest.mark.filterwarnings("ignore:divide by zero:RuntimeWarning")
def test_photo_without_a_face_is_returned_unchanged(protector):
    rng = np.random.default_rng(0)
    blank = Image.fromarray(np.full((*SIZE, 3), 128, np.uint8) + rng.integers(0, 8, (*SIZE, 3), dtype=np.uint8))
    out, record = protector.protect(blank)
    assert record["status"] == "no_face" and record["faces"] == 0 and record["linf"] == 0
    assert out.size == blank.size and np.array_equal(np.asarray(out), np.asarray(blank))
