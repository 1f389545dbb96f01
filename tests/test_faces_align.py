"""Detection and 5-point alignment on real photos: the public-domain astronaut (scikit-image) and, where
../shared/data is present, CFP frontal crops with their hand-placed fiducials."""

import os
from pathlib import Path

import numpy as np
import pytest
from skimage import data as skdata

from recognition.align import ARCFACE_TEMPLATE, align_face, estimate_similarity, invert_affine, paste_back
from recognition.detect import FaceDetector, load_rgb

DATA_ROOT = Path(os.environ.get("FACEPOISON_DATA_ROOT", Path(__file__).resolve().parents[2] / "shared" / "data"))
CFP = DATA_ROOT / "faces" / "cfp"


@pytest.fixture(scope="module")
def detector():
    return FaceDetector()


@pytest.fixture(scope="module")
def astronaut():
    return skdata.astronaut()


def test_detects_the_astronaut(detector, astronaut):
    faces = detector.detect([astronaut, np.zeros((64, 64, 3), np.uint8)])
    assert len(faces[0]) == 1 and faces[1] == []
    face = faces[0][0]
    assert face.score > 0.99
    x1, y1, x2, y2 = face.box
    assert 150 < x1 < x2 < 300 and 30 < y1 < y2 < 200
    le, re, nose, lm, rm = face.landmarks
    assert le[0] < nose[0] < re[0] and max(le[1], re[1]) < nose[1] < min(lm[1], rm[1])
    assert np.all((face.landmarks >= face.box[:2] - 5) & (face.landmarks <= face.box[2:] + 5))


def test_alignment_round_trip(detector, astronaut):
    face = detector.detect([astronaut])[0][0]
    aligned, matrix = align_face(astronaut, face.landmarks)
    assert aligned.shape == (112, 112, 3)
    mapped = face.landmarks @ matrix[:, :2].T + matrix[:, 2]
    assert np.abs(mapped - ARCFACE_TEMPLATE).max() < 6  # least squares over 5 points: close, not exact
    # the landmarks found again on the aligned crop sit near the template
    again = detector.detect([aligned])[0]
    assert again
    error = np.linalg.norm(again[0].landmarks - ARCFACE_TEMPLATE, axis=1)
    assert error[:2].max() < 4 and error.max() < 8  # eyes tight; nose and mouth move with the expression
    # inverse: crop → photo → crop is the identity
    inverse = invert_affine(matrix)
    back = (mapped @ inverse[:, :2].T + inverse[:, 2])
    np.testing.assert_allclose(back, face.landmarks, atol=1e-6)
    # a perturbation pasted back covers the face, not the rest of the photo, and re-aligns to itself
    rng = np.random.default_rng(0)
    delta = rng.uniform(-8, 8, (112, 112, 3)).astype(np.float32)
    on_photo, weight = paste_back(delta, matrix, astronaut.shape[:2])
    assert on_photo.shape == astronaut.shape and weight.max() <= 1 + 1e-6
    assert weight[int(face.landmarks[2][1]), int(face.landmarks[2][0])] > 0.99
    assert weight[:20].max() == 0 and weight[:, :100].max() == 0
    realigned, _ = align_face(on_photo.astype(np.float32), face.landmarks)
    inner = slice(30, 82)
    corr = np.corrcoef(realigned[inner, inner].ravel(), delta[inner, inner].ravel())[0, 1]
    assert corr > 0.5  # bilinear resampling twice blurs high-frequency noise, but the pattern survives


def test_degenerate_landmarks_are_refused():
    with pytest.raises(ValueError):
        estimate_similarity(np.zeros((5, 2)))
    with pytest.raises(ValueError):
        estimate_similarity(np.zeros((4, 2)))


@pytest.mark.skipif(not CFP.is_dir(), reason="CFP is not in ../shared/data")
def test_warp_accuracy_against_cfp_fiducials(detector):
    """CFP's 30 fiducials cover one half of the face: points 12-17 outline the eye, 25 is the mouth corner.
    Mapped through our alignment they must land on the template's eye and mouth corner."""
    errors = []
    for i in range(1, 81, 4):
        img = load_rgb(CFP / f"Data/Images/{i:03d}/frontal/01.jpg")
        fid = np.loadtxt(CFP / f"Data/Fiducials/{i:03d}/frontal/01.txt", delimiter=",")
        faces = detector.detect([img])[0]
        assert faces, f"no face in CFP {i:03d}/frontal/01.jpg"
        _, m = align_face(img, faces[0].landmarks)
        eye, mouth = fid[12:18].mean(0), fid[25]
        errors.append(max(np.linalg.norm(m[:, :2] @ eye + m[:, 2] - ARCFACE_TEMPLATE[0]),
                          np.linalg.norm(m[:, :2] @ mouth + m[:, 2] - ARCFACE_TEMPLATE[3])))
    assert np.median(errors) < 4.0 and max(errors) < 8.0, np.round(errors, 1)


def test_load_rgb_applies_exif_and_converts(tmp_path):
    from PIL import Image

    gray = Image.fromarray(np.tile(np.arange(20, dtype=np.uint8), (10, 1)), mode="L")
    gray.save(tmp_path / "g.png")
    assert load_rgb(tmp_path / "g.png").shape == (10, 20, 3)
    rgba = Image.new("RGBA", (6, 4), (10, 20, 30, 40))
    rgba.save(tmp_path / "a.png")
    assert load_rgb(tmp_path / "a.png")[0, 0].tolist() == [10, 20, 30]
    img = Image.new("RGB", (20, 10))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    img.save(tmp_path / "r.jpg", exif=exif)
    assert load_rgb(tmp_path / "r.jpg").shape == (20, 10, 3)
