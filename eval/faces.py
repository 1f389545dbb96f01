"""Aligned 112×112 faces for the images of a verification benchmark, and on-disk caches.

- Encoded images (``.bin`` files) are already aligned: they are decoded (and resized if not 112×112).
- Image files (LFW, CFP) go through the training pipeline's detection and 5-point alignment (largest face).
  Where no face is found, the centre square of the image, resized to 112×112, stands in, and the image
  is counted as ``undetected`` in the report (every pair stays in its fold, as the protocols require).
- :class:`FaceCache` keeps the aligned faces of a benchmark and the embeddings of each model, keyed by
  content, so a second report on the same inputs skips detection and the forward passes.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Container, Sequence
from pathlib import Path

import cv2
import h5py
import numpy as np

from recognition.align import ALIGNED_SIZE, align_face
from recognition.atomic import atomic_path
from recognition.checkpoint import first_line

Source = str | bytes


def source_key(sources: Sequence[Source], extra: str = "", known: Container[str] = ()) -> str:
    """A content key for a list of image sources: paths with the hash of their bytes, or the bytes' hash.

    Paths in ``known`` (faces taken from a prepared face set, whose own checksum belongs in ``extra``) enter
    by name only, and so do paths that do not exist: the key never needs the raw image files. A file's key
    follows its content, not its modification time, so a data folder copied or touched again (a fresh
    machine, a restored backup) keeps its cached faces and embeddings.
    """
    h = hashlib.sha256(extra.encode())
    for s in sources:
        if isinstance(s, bytes):
            h.update(hashlib.sha256(s).digest())
        elif s in known or not os.path.exists(s):
            h.update(f"{s}\0known\n".encode())
        else:
            h.update(f"{s}\0{_file_digest(s)}\n".encode())
    return h.hexdigest()[:20]


def _file_digest(path: str) -> str:
    """SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def center_square(image: np.ndarray, size: int = ALIGNED_SIZE) -> np.ndarray:
    h, w = image.shape[:2]
    s = min(h, w)
    y, x = (h - s) // 2, (w - s) // 2
    return cv2.resize(image[y : y + s, x : x + s], (size, size), interpolation=cv2.INTER_AREA)


def decode_image(data: bytes) -> np.ndarray:
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if img is None:
        raise ValueError("an image in the benchmark file cannot be decoded")
    img = img[..., ::-1]
    if img.shape[:2] != (ALIGNED_SIZE, ALIGNED_SIZE):
        img = cv2.resize(img, (ALIGNED_SIZE, ALIGNED_SIZE), interpolation=cv2.INTER_AREA)
    return np.ascontiguousarray(img)


def align_sources(
    sources: Sequence[Source], detector_factory: Callable[[], object] | None = None, batch_size: int = 32,
    known: dict[str, np.ndarray] | None = None, progress: Callable[[int], None] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """``(faces (N, 112, 112, 3) uint8, undetected (N,) bool)`` for encoded aligned images or image paths.

    ``known`` maps a path to an already aligned face (e.g. from a prepared face set) and skips detection.
    With ``known`` given, a path that is neither known nor on disk (a photo the prepared set found no face
    in, on a machine without the raw images) becomes a mid-grey face marked undetected, so its pairs stay
    in their folds as the protocols require. ``detector_factory`` builds the
    :class:`~recognition.detect.FaceDetector` when a path needs detection.
    """
    from recognition.detect import load_rgb

    faces = np.zeros((len(sources), ALIGNED_SIZE, ALIGNED_SIZE, 3), np.uint8)
    undetected = np.zeros(len(sources), bool)
    pending: list[int] = []
    for i, s in enumerate(sources):
        if isinstance(s, bytes):
            faces[i] = decode_image(s)
        elif known is not None and s in known:
            faces[i] = known[s]
        elif known is not None and not os.path.exists(s):
            faces[i] = 128
            undetected[i] = True
        else:
            pending.append(i)
            continue
        if progress:
            progress(1)
    detector = detector_factory() if pending and detector_factory is not None else None
    for start in range(0, len(pending), batch_size):
        chunk = pending[start : start + batch_size]
        images = []
        for i in chunk:
            try:
                images.append(load_rgb(sources[i]))
            except Exception as exc:  # PIL raises many types
                raise ValueError(f"cannot read benchmark image {sources[i]}: {first_line(exc)}") from exc
        found = detector.detect(images) if detector is not None else [[] for _ in images]
        for i, image, dets in zip(chunk, images, found, strict=True):
            if dets:
                faces[i], _ = align_face(image, dets[0].landmarks)
            else:
                faces[i] = center_square(image)
                undetected[i] = True
        if progress:
            progress(len(chunk))
    return faces, undetected


class FaceCache:
    """HDF5 files under ``folder``: ``faces-<key>.h5`` (aligned faces) and ``emb-<model>-<key>.h5``."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)

    def _write(self, path: Path, **arrays: np.ndarray) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
            for k, v in arrays.items():
                f.create_dataset(k, data=v, compression="gzip" if v.dtype == np.uint8 else None)

    def _read(self, path: Path, *keys: str) -> tuple[np.ndarray, ...] | None:
        if not path.is_file():
            return None
        try:
            with h5py.File(path, "r") as f:
                return tuple(f[k][:] for k in keys)
        except (OSError, KeyError):  # a damaged cache entry is recomputed
            return None

    def faces(self, key: str) -> tuple[np.ndarray, np.ndarray] | None:
        return self._read(self.folder / f"faces-{key}.h5", "faces", "undetected")  # type: ignore[return-value]

    def put_faces(self, key: str, faces: np.ndarray, undetected: np.ndarray) -> None:
        self._write(self.folder / f"faces-{key}.h5", faces=faces, undetected=undetected)

    def embeddings(self, model: str, key: str) -> np.ndarray | None:
        got = self._read(self.folder / f"emb-{model}-{key}.h5", "embeddings")
        return None if got is None else got[0]

    def put_embeddings(self, model: str, key: str, embeddings: np.ndarray) -> None:
        self._write(self.folder / f"emb-{model}-{key}.h5", embeddings=embeddings.astype(np.float32))
