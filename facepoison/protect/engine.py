"""Protecting faces in images: the public Python API that ``facepoison protect`` is a loop over.

Per image: detect every face (at reduced scale for large photos), align each to 112×112, craft a poison in
the aligned frame against the surrogate (faces batched across images; identities imprinted into the
surrogate's head), warp the perturbation back onto the full-resolution image over the face region with a
feathered edge, add, clip and round.

Example:
    >>> from PIL import Image
    >>> from facepoison import Protector
    >>> protector = Protector(strength="mid")                      # doctest: +SKIP
    >>> protected, record = protector.protect(Image.open("me.jpg"))  # doctest: +SKIP
    >>> record["faces"], record["linf"] <= 8                        # doctest: +SKIP
    (1, True)
"""

from __future__ import annotations

import dataclasses
import time
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from facepoison.errors import UsageError, check_chroma, check_eps
from facepoison.objectives import OBJECTIVES, create_objective
from facepoison.protect.surrogate import DEFAULT_SURROGATE, IDENTITY_MODES, Surrogate, imprint_centers
from facepoison.runtime import resolve_device
from recognition.align import align_face, paste_back

# strength → (ε in /255, signed-Adam steps); see README.
PRESETS = {"low": (4.0, 10), "mid": (8.0, 15), "high": (16.0, 30)}
DETECT_MAX_SIDE = 1024
DETECT_MIN_SIDE = 256


@dataclass(frozen=True)
class ProtectSettings:
    """How faces are protected.

    Attributes:
        eps: L∞ bound in /255 units.
        steps: crafting steps per batch of faces.
        identities: who is who: ``folder`` (the caller's groups, e.g. the photo's folder), ``auto`` (clusters
            of embeddings over everything protected together), ``single`` (every face alone).
        batch_size: faces crafted together.
        force_png: write every photo as PNG (files only).
        no_face: photos without a face: ``copy`` unchanged or ``skip`` (files only).
        keep_gps: keep the GPS metadata (files only).
        min_face_size: smallest face side in pixels.
        jpeg_quality: quality of JPEG outputs (files only).
        seed: base seed of the crafting randomness.
        objective: the crafting objective (see :mod:`facepoison.objectives`).
        chroma: the bound on the perturbation's colour part, a fraction in [0, 1] of what the ε-ball allows; lower
            values trade protection for a smaller colour cast on smooth skin (see
            :func:`facepoison.losses.bound_chroma`; docs/results/faces_chroma.md measures the trade). The default,
            half, keeps 13.1 of the 19.2 points of the protect path's drop (docs/results/faces_protect_chroma.md).
    """

    eps: float = 8.0
    steps: int = 15
    identities: str = "folder"
    batch_size: int = 16
    force_png: bool = False
    no_face: str = "copy"
    keep_gps: bool = False
    min_face_size: int = 20
    jpeg_quality: int = 95
    seed: int = 0
    objective: str = "error_min_identity"
    chroma: float = 0.5

    def __post_init__(self) -> None:
        if self.identities not in IDENTITY_MODES:
            raise UsageError(f"unknown identities mode {self.identities!r}; valid: {', '.join(IDENTITY_MODES)}")
        if self.steps < 1 or self.batch_size < 1:
            raise UsageError("steps and batch size must be >= 1")
        check_eps(self.eps, UsageError)
        check_chroma(self.chroma, UsageError)
        if self.objective not in OBJECTIVES or self.objective in ("random", "tensorclog"):
            valid = [n for n in OBJECTIVES.names() if n not in ("random", "tensorclog")]
            raise UsageError(f"unknown protect objective {self.objective!r}; valid: {', '.join(valid)}")

    @classmethod
    def from_strength(cls, strength: str = "mid", eps: float | None = None, steps: int | None = None,
                      **kwargs: Any) -> ProtectSettings:
        """Settings of a strength preset (``low``, ``mid``, ``high``), with ``eps``/``steps`` overriding it."""
        if strength not in PRESETS:
            raise UsageError(f"unknown strength {strength!r}; valid: {', '.join(PRESETS)}")
        p_eps, p_steps = PRESETS[strength]
        return cls(eps=p_eps if eps is None else eps, steps=p_steps if steps is None else steps, **kwargs)


@dataclass
class FaceScan:
    """The faces found in one image: aligned crops, their alignment matrices and surrogate embeddings."""

    faces: list[np.ndarray] = field(default_factory=list)  # aligned (112, 112, 3) uint8
    matrices: list[np.ndarray] = field(default_factory=list)
    embeddings: np.ndarray | None = None
    seconds: float = 0.0


def detect_faces(detector, images: list[np.ndarray]) -> list[list]:
    """Faces of each image, detected on a copy whose longer side is at most ``DETECT_MAX_SIDE`` (large photos)
    or at least ``DETECT_MIN_SIDE`` (thumbnails, whose faces are near MTCNN's smallest window)."""
    small, scales = [], []
    for img in images:
        side = max(img.shape[:2])
        s = min(1.0, DETECT_MAX_SIDE / side) if side > DETECT_MIN_SIDE else DETECT_MIN_SIDE / side
        scales.append(s)
        small.append(img if s == 1.0 else cv2.resize(img, (round(img.shape[1] * s), round(img.shape[0] * s)),
                                                     interpolation=cv2.INTER_AREA if s < 1 else cv2.INTER_CUBIC))
    found = detector.detect(small)
    return [[dataclasses.replace(f, landmarks=f.landmarks / s, box=f.box / s) for f in faces]
            for faces, s in zip(found, scales, strict=True)]


def identity_pattern(key: str, eps: float, chroma: float = 1.0) -> np.ndarray:
    """The ``synthetic_identity`` pattern of the identity named ``key`` (the same key always gives the same one),
    ``(112, 112, 3)`` float in pixel units, ±``eps`` before the chroma limit (:mod:`facepoison.shortcuts`)."""
    from facepoison.losses import limit_chroma
    from facepoison.shortcuts import patterns

    p = limit_chroma(patterns([zlib.crc32(key.encode())], (3, 112, 112), eps / 255, seed=0), chroma)
    return (p[0] * 255).permute(1, 2, 0).numpy()


def to_rgb(image: Image.Image | np.ndarray) -> tuple[np.ndarray, dict[str, Any]]:
    """``(H, W, 3)`` uint8 pixels of a PIL image or a numpy array, and how to turn them back (see :func:`from_rgb`)."""
    if isinstance(image, Image.Image):
        mode = image.mode
        alpha = np.asarray(image.getchannel("A")) if mode in ("RGBA", "LA") else None
        gray = mode in ("L", "LA")
        rgb = np.asarray(image.convert("RGB"))
        return np.ascontiguousarray(rgb), {"kind": "pil", "gray": gray, "alpha": alpha, "mode": mode}
    arr = np.asarray(image)
    if arr.dtype != np.uint8 or arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (3, 4)):
        raise ValueError(f"expected an (H, W), (H, W, 3) or (H, W, 4) uint8 array, got {arr.dtype} {arr.shape}")
    if arr.ndim == 2:
        return np.repeat(arr[..., None], 3, axis=2), {"kind": "array", "gray": True, "alpha": None}
    alpha = arr[..., 3] if arr.shape[2] == 4 else None
    return np.ascontiguousarray(arr[..., :3]), {"kind": "array", "gray": False, "alpha": alpha}


def from_rgb(rgb: np.ndarray, how: dict[str, Any]) -> Image.Image | np.ndarray:
    """The inverse of :func:`to_rgb` for protected pixels (gray stays gray, alpha is put back unchanged)."""
    pixels = rgb[..., 0] if how["gray"] else rgb
    if how["alpha"] is not None:
        pixels = np.dstack([pixels, how["alpha"]])
    if how["kind"] == "array":
        return pixels
    return Image.fromarray(np.ascontiguousarray(pixels))  # L, LA, RGB or RGBA from the shape


def quality(original: np.ndarray, protected: np.ndarray) -> dict[str, float]:
    """SSIM and PSNR (dB) between two uint8 images of the same layout (SSIM is NaN below 7 pixels)."""
    ssim = float("nan") if min(original.shape[:2]) < 7 else structural_similarity(
        original, protected, data_range=255, channel_axis=2 if original.ndim == 3 else None)
    psnr = peak_signal_noise_ratio(original, protected, data_range=255)
    return {"ssim": round(float(ssim), 5), "psnr": round(float(psnr), 3)}


class Protector:
    """Protect the faces in images against face-recognition training.

    Configure once, call on images: :meth:`protect` (one image), :meth:`protect_batch` (several, crafted
    together), or the three stages that the file loop of ``facepoison protect`` uses to stream large runs:
    :meth:`scan` → :meth:`craft` → :meth:`apply`.

    Args:
        surrogate: a face recognizer checkpoint, or a loaded :class:`Surrogate`; the bundled one by default.
        settings: crafting settings; built from ``strength``/``eps``/``steps`` when not given.
        strength: ``low``, ``mid`` (default) or ``high``.
        eps: L∞ bound in /255 units (overrides the preset).
        steps: crafting steps (overrides the preset).
        device: ``auto``, ``cpu``, ``cuda``.
        detector: a face detector with ``detect(list of RGB arrays)``; MTCNN by default (built when first used).

    Example:
        >>> protector = Protector(strength="high", device="cpu")               # doctest: +SKIP
        >>> results = protector.protect_batch(photos, identities=["ann", "ann", "bob"])  # doctest: +SKIP
        >>> [record["status"] for _, record in results]                       # doctest: +SKIP
        ['protected', 'protected', 'protected']
    """

    def __init__(self, surrogate: str | Path | Surrogate | None = None, settings: ProtectSettings | None = None,
                 strength: str = "mid", eps: float | None = None, steps: int | None = None,
                 device: str = "auto", detector=None) -> None:
        self.settings = settings or ProtectSettings.from_strength(strength, eps, steps)
        self.device = resolve_device(device)
        if isinstance(surrogate, Surrogate):
            self.surrogate = surrogate
        else:
            self.surrogate = Surrogate(Path(surrogate) if surrogate else DEFAULT_SURROGATE, self.device)
        self._detector = detector

    @property
    def detector(self):
        """The face detector (MTCNN unless one was given), built on first use."""
        if self._detector is None:
            from recognition.detect import FaceDetector

            self._detector = FaceDetector(min_face_size=self.settings.min_face_size, device=self.device)
        return self._detector

    # --- the three stages ---------------------------------------------------------------------------------
    def scan(self, images: Sequence[np.ndarray]) -> list[FaceScan]:
        """Detect, align and embed every face of each ``(H, W, 3)`` uint8 image."""
        t0 = time.perf_counter()
        found = detect_faces(self.detector, list(images)) if images else []
        share = (time.perf_counter() - t0) / max(1, len(images))
        scans = []
        for image, faces in zip(images, found, strict=True):
            scan = FaceScan(seconds=share)
            for face in faces:
                try:
                    aligned, matrix = align_face(image, face.landmarks)
                except ValueError:
                    continue
                scan.faces.append(aligned)
                scan.matrices.append(matrix)
            scans.append(scan)
        faces = [f for s in scans for f in s.faces]
        if faces:
            t0 = time.perf_counter()
            emb = self.surrogate.embed(np.stack(faces))
            share = (time.perf_counter() - t0) / len(faces)
            k = 0
            for s in scans:
                s.embeddings, k = emb[k : k + len(s.faces)], k + len(s.faces)
                s.seconds += share * len(s.faces)
        return scans

    def craft(self, scans: Sequence[FaceScan], groups: Sequence[str] | None = None,
              wanted: Sequence[bool] | None = None, seed_key: Sequence[str] | None = None
              ) -> Iterator[tuple[int, list[np.ndarray]]]:
        """Craft the faces of ``scans`` together; yield ``(scan index, per-face deltas)`` as each image completes.

        Args:
            scans: from :meth:`scan`.
            groups: the identity group of each scan (``folder`` mode); one group when None.
            wanted: which scans need perturbations (others only inform the imprinted identities, e.g. the
                finished photos of a resumed run); all by default.
            seed_key: a name per scan that seeds the crafting of the batch it starts (stable across resumes).

        Deltas are ``(112, 112, 3)`` float arrays in pixel units, in the aligned frame of each face.
        """
        s = self.settings
        groups = list(groups) if groups is not None else ["all"] * len(scans)
        wanted = list(wanted) if wanted is not None else [True] * len(scans)
        keys = list(seed_key) if seed_key is not None else [str(i) for i in range(len(scans))]
        with_faces = [i for i, sc in enumerate(scans) if sc.faces]
        if not with_faces:
            return
        all_emb = np.concatenate([scans[i].embeddings for i in with_faces])
        face_groups = [groups[i] for i in with_faces for _ in scans[i].faces]
        centers, labels = imprint_centers(s.identities, face_groups, all_emb)
        offsets, k = {}, 0
        for i in with_faces:
            offsets[i], k = k, k + len(scans[i].faces)
        queue = [(i, j) for i in with_faces if wanted[i] for j in range(len(scans[i].faces))]
        drawn = not create_objective(s.objective).optimizes and create_objective(s.objective).classwise
        deltas: dict[int, list[np.ndarray]] = {}
        for batch in self._batches(queue, labels, offsets):
            t0 = time.perf_counter()
            faces = np.stack([scans[i].faces[j] for i, j in batch])
            face_labels = labels[[offsets[i] + j for i, j in batch]]
            used = np.unique(face_labels)
            remap = {int(u): n for n, u in enumerate(used)}
            seed = zlib.crc32(f"{s.seed}|{keys[batch[0][0]]}|{batch[0][1]}".encode())
            if drawn:  # one fixed pattern per identity, keyed by its folder (or by the batch's first photo)
                i, j = batch[0]
                who = face_groups[offsets[i] + j] if s.identities == "folder" else keys[i]
                out = [identity_pattern(f"{s.seed}|{who}", s.eps, s.chroma)] * len(batch)
            else:
                out = self.surrogate.craft(faces, centers[used], np.array([remap[int(v)] for v in face_labels]),
                                           s.eps, s.steps, seed, objective=s.objective, chroma=s.chroma)
            share = (time.perf_counter() - t0) / len(batch)
            for (i, _), d in zip(batch, out, strict=True):
                scans[i].seconds += share
                deltas.setdefault(i, []).append(d)
                if len(deltas[i]) == len(scans[i].faces):
                    yield i, deltas.pop(i)

    def _batches(self, queue: list[tuple[int, int]], labels: np.ndarray, offsets: dict[int, int]
                 ) -> Iterator[list[tuple[int, int]]]:
        """Faces crafted together: runs of ``batch_size`` in order, or, for identity-wise objectives, every face of
        one identity together (its one pattern is crafted from all of them)."""
        if not create_objective(self.settings.objective).classwise:
            for start in range(0, len(queue), self.settings.batch_size):
                yield queue[start : start + self.settings.batch_size]
            return
        by_label: dict[int, list[tuple[int, int]]] = {}
        for i, j in queue:
            by_label.setdefault(int(labels[offsets[i] + j]), []).append((i, j))
        yield from by_label.values()

    def apply(self, rgb: np.ndarray, scan: FaceScan, deltas: Sequence[np.ndarray], gray: bool = False) -> np.ndarray:
        """The protected ``(H, W, 3)`` uint8 pixels: every face's delta warped back, summed, clipped to ±ε, rounded.

        With ``gray``, the perturbation is the same in all three channels (the image stays grayscale).
        """
        h, w = rgb.shape[:2]
        total = np.zeros((h, w, 3), np.float32)
        for d, matrix in zip(deltas, scan.matrices, strict=True):
            total += paste_back(d, matrix, (h, w))[0]
        eps = self.settings.eps
        np.clip(total, -eps, eps, out=total)
        if gray:
            total[:] = total.mean(axis=2, keepdims=True)
        return np.clip(np.rint(rgb.astype(np.float32) + total), 0, 255).astype(np.uint8)

    # --- whole images ---------------------------------------------------------------------------------------
    def protect(self, image: Image.Image | np.ndarray, identity: str | None = None
                ) -> tuple[Image.Image | np.ndarray, dict[str, Any]]:
        """Protect one image (PIL, or an ``(H, W[, 3|4])`` uint8 array); returns the same kind and a record."""
        return self.protect_batch([image], None if identity is None else [identity])[0]

    def protect_batch(self, images: Sequence[Image.Image | np.ndarray], identities: Sequence[str] | None = None
                      ) -> list[tuple[Image.Image | np.ndarray, dict[str, Any]]]:
        """Protect several images, crafted together (``identities`` name the person of each image in ``folder``
        mode; ``auto`` clusters the faces of all the images; ``single`` treats every face alone).

        Returns:
            ``(protected image, record)`` per image; the record has ``status`` (``protected`` or ``no_face``),
            ``faces``, ``eps``, ``linf``, ``ssim``, ``psnr``, ``seconds`` and ``surrogate_sha256``.
        """
        if identities is not None and len(identities) != len(images):
            raise ValueError(f"got {len(images)} images but {len(identities)} identities")
        converted = [to_rgb(im) for im in images]
        rgbs = [c[0] for c in converted]
        scans = self.scan(rgbs)
        done = dict(self.craft(scans, identities))
        results = []
        for i, ((rgb, how), scan) in enumerate(zip(converted, scans, strict=True)):
            record = {"status": "no_face" if not scan.faces else "protected", "faces": len(scan.faces),
                      "eps": self.settings.eps, "objective": self.settings.objective, "chroma": self.settings.chroma,
                      "surrogate_sha256": self.surrogate.sha256}
            new = self.apply(rgb, scan, done[i], gray=how["gray"]) if scan.faces else rgb.copy()
            linf = int(np.abs(new.astype(np.int16) - rgb.astype(np.int16)).max())
            original, protected = (rgb[..., 0], new[..., 0]) if how["gray"] else (rgb, new)
            record |= {"linf": linf, "bound": int(round(self.settings.eps)), **quality(original, protected),
                       "seconds": round(scan.seconds, 3)}
            results.append((from_rgb(new, how), record))
        return results
