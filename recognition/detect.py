"""Face detection with MTCNN (facenet-pytorch; its weights ship inside the wheel, nothing is downloaded).

Returns every face with its box, 5 landmarks (left eye, right eye, nose, left and right mouth corner)
and score. Images are decoded with their EXIF orientation applied and converted to RGB first.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps


@dataclass(frozen=True)
class Face:
    """One detected face: ``box`` (x1, y1, x2, y2), ``landmarks`` (5, 2) in pixels, ``score`` in [0, 1]."""

    box: np.ndarray
    landmarks: np.ndarray
    score: float

    @property
    def area(self) -> float:
        return float(max(0.0, self.box[2] - self.box[0]) * max(0.0, self.box[3] - self.box[1]))


def load_rgb(path: str | Path) -> np.ndarray:
    """Decode an image as (H, W, 3) uint8 RGB with the EXIF orientation applied.

    Grayscale, palette and RGBA images are converted to RGB (alpha is dropped: detection ignores it).

    Raises:
        OSError / PIL.UnidentifiedImageError: unreadable or truncated file.
    """
    with Image.open(path) as im:
        im = ImageOps.exif_transpose(im)
        im.load()
        return np.asarray(im.convert("RGB"), dtype=np.uint8).copy()


def _as_array(x) -> np.ndarray | None:
    """facenet-pytorch under numpy 2 returns object arrays (or None per image); make them float arrays."""
    if x is None:
        return None
    arr = np.asarray(x)
    if arr.dtype == object:
        if arr.size == 0 or all(v is None for v in arr.ravel()):
            return None
        arr = np.stack([np.asarray(v, dtype=np.float64) for v in arr])
    return arr.astype(np.float64)


class FaceDetector:
    """Batched MTCNN face detector.

    Args:
        min_face_size: smallest face side in pixels that the detector looks for.
        score_threshold: faces scoring below this are dropped.
        device: ``cpu`` or ``cuda``.
        pad: black border added on every side before detection, as a fraction of the longer side. MTCNN
            misplaces landmarks on faces that fill the frame (tight crops such as CFP's): on 20 CFP frontal
            crops, a 0.25 border cut the median alignment error against CFP's fiducials from 8.0 to 2.5 px
            in the 112×112 frame (worst case 17.7 → 6.2 px).

    Example:
        >>> faces = FaceDetector().detect([load_rgb("photo.jpg")])[0]  # doctest: +SKIP
        >>> largest = max(faces, key=lambda f: f.area)  # doctest: +SKIP
    """

    def __init__(
        self, min_face_size: int = 20, score_threshold: float = 0.9, device: str | torch.device = "cpu",
        pad: float = 0.25,
    ) -> None:
        from facenet_pytorch import MTCNN

        self.score_threshold = score_threshold
        self.min_face_size = min_face_size
        self.pad = pad
        self.mtcnn = MTCNN(min_face_size=min_face_size, keep_all=True, select_largest=False, post_process=False,
                           device=torch.device(device))

    def detect(self, images: list[np.ndarray]) -> list[list[Face]]:
        """Faces of each image (RGB uint8 arrays), largest first. Same-sized images are detected in one batch."""
        results: list[list[Face]] = [[] for _ in images]
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, img in enumerate(images):
            groups.setdefault(img.shape, []).append(i)
        for shape, indices in groups.items():
            if min(shape[:2]) < self.min_face_size:  # no face of the minimum size fits (MTCNN would fail)
                continue
            p = int(round(self.pad * max(shape[:2])))
            batch = np.stack([images[i] for i in indices])
            if p > 0:
                batch = np.pad(batch, ((0, 0), (p, p), (p, p), (0, 0)))
            with torch.no_grad():
                boxes, probs, points = self.mtcnn.detect(batch, landmarks=True)
            for j, i in enumerate(indices):
                b, s, lm = _as_array(boxes[j]), _as_array(probs[j]), _as_array(points[j])
                if b is None or s is None or lm is None:
                    continue
                faces = [Face(box=b[k] - p, landmarks=lm[k].reshape(5, 2) - p, score=float(s[k]))
                         for k in range(len(b)) if np.isfinite(s[k]) and s[k] >= self.score_threshold]
                results[i] = sorted(faces, key=lambda f: f.area, reverse=True)
        return results
