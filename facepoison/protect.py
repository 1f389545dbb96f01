"""The ``facepoison protect`` engine: photos in, protected photos and manifest records out.

Per photo: decode (EXIF orientation applied), detect every face (at reduced scale for large photos), align
each to 112×112, craft an alignment poison in the aligned frame (independent mode: each batch of faces is
a shard crafted on its own, with the target gradient of its own clean faces), warp the perturbation back
onto the full-resolution photo over the face region with a feathered edge, add, clip, quantize and save in
the photo's own format. Faces are batched across photos.

Labels: a user's faces are not classes of the surrogate. Each identity gets a class in the surrogate's
CosFace head by *imprinting*: its class weight is the normalized mean embedding of its faces, appended to
the surrogate's own classes. Identities come from the photo's folder (``folder``), from clustering the
embeddings (``auto``), or each face is its own identity (``single``).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from facepoison.crafter import CrafterConfig, PoisonCrafter
from facepoison.losses import target_gradient
from facepoison.objectives import create_objective
from facepoison.photos import LOSSLESS_FORMATS, SUFFIX, PhotoError, output_format, read_back, read_photo, write_photo
from facepoison.provenance import file_sha256
from recognition.align import align_face, paste_back
from recognition.embed import ArrayFaces, embed_dataset
from recognition.heads import CosFaceHead, FaceRecognizer

DEFAULT_SURROGATE = Path(__file__).resolve().parent / "weights" / "default_surrogate.pt"
# strength → (ε in /255, signed-Adam steps); see README.
PRESETS = {"low": (4.0, 10), "mid": (8.0, 15), "high": (16.0, 30)}
IDENTITY_MODES = ("folder", "auto", "single")
# `auto`: faces closer than this cosine distance (average linkage) are one person.
AUTO_DISTANCE = 0.6
MANIFEST = "manifest.jsonl"
DONE = ("protected", "no_face")
DETECT_MAX_SIDE = 1024
DETECT_MIN_SIDE = 256


@dataclass
class Item:
    """One input photo: its source, its path relative to the output root, and its identity group."""

    source: Path
    rel: str
    group: str


@dataclass
class ProtectSettings:
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


@dataclass
class _Scanned:
    item: Item
    todo: bool
    faces: list[np.ndarray] = field(default_factory=list)  # aligned (112,112,3) uint8
    matrices: list[np.ndarray] = field(default_factory=list)
    embeddings: np.ndarray | None = None
    error: str = ""
    seconds: float = 0.0


class Surrogate:
    """A face recognizer whose CosFace head gets imprinted identities appended for crafting."""

    def __init__(self, path: str | Path, device: torch.device) -> None:
        from facepoison.cli.common import load_classifier

        model, meta = load_classifier(str(path))
        if meta.get("kind") != "face":
            raise ValueError(f"surrogate {path} is not a face recognizer")
        self.model = model.float().eval().to(device)
        self.meta = meta
        self.device = device
        self.sha256 = file_sha256(path)
        self.base_weight = F.normalize(self.model.head.weight.detach(), dim=1)

    def embed(self, faces: np.ndarray, batch_size: int = 64) -> np.ndarray:
        """Normalized flip-TTA embeddings of aligned uint8 faces ``(N, 112, 112, 3)``."""
        if len(faces) == 0:
            return np.zeros((0, self.base_weight.shape[1]), np.float32)
        return embed_dataset(self.model, ArrayFaces(faces), batch_size=batch_size, device=self.device)

    def craft(self, faces: np.ndarray, centers: np.ndarray, labels: np.ndarray, eps: float, steps: int,
              seed: int) -> np.ndarray:
        """Alignment poisons (pixel units, ``(N, 112, 112, 3)`` float) of faces labelled by imprinted centers."""
        head = CosFaceHead(self.base_weight.shape[1], len(self.base_weight) + len(centers),
                           s=self.model.head.s, m=self.model.head.m).to(self.device)
        with torch.no_grad():
            head.weight.copy_(torch.cat([self.base_weight, torch.from_numpy(centers).to(self.device)]))
        model = FaceRecognizer(self.model.backbone, head).eval()
        # contiguous NCHW: a channels-last input crashes the CPU double backward (memory corruption seen)
        x = torch.from_numpy(faces).to(self.device).permute(0, 3, 1, 2).float().div(255).contiguous()
        y = torch.from_numpy(labels).to(self.device).long() + len(self.base_weight)
        target = target_gradient(model, [(x, y)], logits_fn=model.logits, device=self.device)
        objective = create_objective("alignment", target=target, independent=True)
        config = CrafterConfig(eps=eps, steps=steps, restarts=1, independent=True, seed=seed)
        crafter = PoisonCrafter(model, objective, config, logits_fn=model.logits, device=self.device)
        delta = crafter(x, y, torch.Generator().manual_seed(seed)).delta
        return (delta * 255).permute(0, 2, 3, 1).cpu().numpy()


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


def imprint_centers(mode: str, groups: list[str], embeddings: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(class centers ``(U, D)``, label of each face) for faces with the given identity groups."""
    if len(embeddings) == 0:
        return np.zeros((0, 0), np.float32), np.zeros(0, np.int64)
    if mode == "single":
        labels = np.arange(len(embeddings))
    elif mode == "folder":
        names = sorted(set(groups))
        labels = np.array([names.index(g) for g in groups])
    elif mode == "auto":
        if len(embeddings) == 1:
            labels = np.zeros(1, np.int64)
        else:
            from sklearn.cluster import AgglomerativeClustering

            labels = AgglomerativeClustering(n_clusters=None, metric="cosine", linkage="average",
                                             distance_threshold=AUTO_DISTANCE).fit_predict(embeddings)
    else:
        raise ValueError(f"unknown identities mode {mode!r}; valid: {', '.join(IDENTITY_MODES)}")
    centers = np.stack([embeddings[labels == k].mean(0) for k in range(labels.max() + 1)])
    centers /= np.maximum(np.linalg.norm(centers, axis=1, keepdims=True), 1e-12)
    return centers.astype(np.float32), labels.astype(np.int64)


class Protector:
    """Protect photos in batches; :meth:`run` yields one manifest record per photo as each one finishes."""

    def __init__(self, surrogate: Surrogate, settings: ProtectSettings, out_dir: Path,
                 detector_factory: Callable[[], object]) -> None:
        self.surrogate = surrogate
        self.s = settings
        self.out_dir = out_dir
        self._detector_factory = detector_factory
        self._detector = None

    @property
    def detector(self):
        if self._detector is None:
            self._detector = self._detector_factory()
        return self._detector

    def output_path(self, item: Item, fmt: str) -> Path:
        rel = Path(item.rel)
        if fmt != _format_of_suffix(rel.suffix):
            rel = rel.with_suffix(SUFFIX[fmt])
        return self.out_dir / rel

    # --- scanning -------------------------------------------------------------------------------------
    def _scan(self, items: list[Item], todo: set[str]) -> list[_Scanned]:
        scanned = []
        for start in range(0, len(items), 16):
            chunk = items[start : start + 16]
            photos, rows = [], []
            for item in chunk:
                t0 = time.perf_counter()
                row = _Scanned(item, item.rel in todo)
                try:
                    photos.append(read_photo(item.source, self.s.keep_gps).rgb)
                except PhotoError as exc:
                    row.error = str(exc)
                    photos.append(None)
                row.seconds = time.perf_counter() - t0
                rows.append(row)
            valid = [i for i, p in enumerate(photos) if p is not None]
            t0 = time.perf_counter()
            found = detect_faces(self.detector, [photos[i] for i in valid]) if valid else []
            share = (time.perf_counter() - t0) / max(1, len(valid))
            for i, faces in zip(valid, found, strict=True):
                row = rows[i]
                row.seconds += share
                for face in faces:
                    try:
                        aligned, matrix = align_face(photos[i], face.landmarks)
                    except ValueError:
                        continue
                    row.faces.append(aligned)
                    row.matrices.append(matrix)
            scanned.extend(rows)
        faces = [f for r in scanned for f in r.faces]
        if faces:
            emb = self.surrogate.embed(np.stack(faces))
            k = 0
            for r in scanned:
                r.embeddings, k = emb[k : k + len(r.faces)], k + len(r.faces)
        return scanned

    # --- one group of photos (an identity folder, or the whole run for `auto`) --------------------------
    def run(self, groups: list[list[Item]], todo: set[str]) -> Iterator[dict]:
        for group in groups:
            if not any(item.rel in todo for item in group):
                continue
            yield from self._run_group(group, todo)

    def _run_group(self, group: list[Item], todo: set[str]) -> Iterator[dict]:
        # Finished photos of the group are scanned too: the imprinted identity is the same on a resumed run.
        scanned = self._scan(group, todo)
        with_faces = [r for r in scanned if r.faces]
        all_emb = np.concatenate([r.embeddings for r in with_faces]) if with_faces else np.zeros((0, 1))
        face_groups = [r.item.group for r in with_faces for _ in r.faces]
        centers, labels = imprint_centers(self.s.identities, face_groups, all_emb)
        offsets, k = {}, 0
        for r in with_faces:
            offsets[r.item.rel], k = k, k + len(r.faces)
        queue: list[tuple[_Scanned, int]] = []
        for r in scanned:
            if not r.todo:
                continue
            if r.error:
                yield self._record(r, "failed: " + r.error)
            elif not r.faces:
                yield self._no_face(r)
            else:
                queue.extend((r, j) for j in range(len(r.faces)))
        deltas: dict[str, list[np.ndarray]] = {}
        for start in range(0, len(queue), self.s.batch_size):
            batch = queue[start : start + self.s.batch_size]
            t0 = time.perf_counter()
            faces = np.stack([r.faces[j] for r, j in batch])
            face_labels = labels[[offsets[r.item.rel] + j for r, j in batch]]
            used = np.unique(face_labels)
            remap = {int(u): i for i, u in enumerate(used)}
            seed = zlib.crc32(f"{self.s.seed}|{batch[0][0].item.rel}|{batch[0][1]}".encode())
            out = self.surrogate.craft(faces, centers[used], np.array([remap[int(v)] for v in face_labels]),
                                       self.s.eps, self.s.steps, seed)
            share = (time.perf_counter() - t0) / len(batch)
            for (r, _), d in zip(batch, out, strict=True):
                r.seconds += share
                deltas.setdefault(r.item.rel, []).append(d)
                if len(deltas[r.item.rel]) == len(r.faces):
                    yield self._finish(r, deltas.pop(r.item.rel))

    # --- outputs --------------------------------------------------------------------------------------
    def _record(self, r: _Scanned, status: str, **extra) -> dict:
        return {"path": r.item.rel, "status": status, "faces": len(r.faces), "eps": self.s.eps,
                "seconds": round(r.seconds, 3), "surrogate_sha256": self.surrogate.sha256, **extra}

    def _no_face(self, r: _Scanned) -> dict:
        t0 = time.perf_counter()
        extra = {}
        if self.s.no_face == "copy":
            dst = self.out_dir / r.item.rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            tmp = dst.with_name(f".{dst.name}.tmp")
            shutil.copy2(r.item.source, tmp)
            tmp.replace(dst)
            extra["output"] = r.item.rel
        r.seconds += time.perf_counter() - t0
        return self._record(r, "no_face", action=self.s.no_face, **extra)

    def _finish(self, r: _Scanned, face_deltas: list[np.ndarray]) -> dict:
        t0 = time.perf_counter()
        try:
            photo = read_photo(r.item.source, self.s.keep_gps)
        except PhotoError as exc:  # changed on disk since the scan
            return self._record(r, f"failed: {exc}")
        h, w = photo.rgb.shape[:2]
        total = np.zeros((h, w, 3), np.float32)
        for d, matrix in zip(face_deltas, r.matrices, strict=True):
            total += paste_back(d, matrix, (h, w))[0]
        np.clip(total, -self.s.eps, self.s.eps, out=total)
        if photo.gray:
            total[:] = total.mean(axis=2, keepdims=True)
        new = np.clip(np.rint(photo.rgb.astype(np.float32) + total), 0, 255).astype(np.uint8)
        fmt = output_format(photo, self.s.force_png)
        if fmt == "JPEG" and photo.alpha is not None:
            fmt = "PNG"
        dst = self.output_path(r.item, fmt)
        pixels = new[..., 0] if photo.gray else new
        write_photo(photo, pixels, dst, fmt, self.s.jpeg_quality)
        saved, alpha = read_back(dst, photo)
        original = photo.pixels()
        linf = int(np.abs(saved.astype(np.int16) - original.astype(np.int16)).max())
        bound = int(round(self.s.eps))
        extra = {"output": str(dst.relative_to(self.out_dir)), "format": fmt, "linf": linf, "bound": bound,
                 "ssim": round(float(_ssim(original, saved)), 5),
                 "psnr": round(float(peak_signal_noise_ratio(original, saved, data_range=255)), 3)}
        if fmt == "JPEG":  # what re-encoding alone costs, for comparison with the measured L∞
            extra["linf_jpeg_reencode_only"] = _jpeg_roundtrip_linf(photo, self.s.jpeg_quality)
        if photo.note:
            extra["note"] = photo.note
        r.seconds += time.perf_counter() - t0
        if photo.alpha is not None and (alpha is None or not np.array_equal(alpha, photo.alpha)):
            dst.unlink()
            return self._record(r, "failed: the alpha channel changed on saving", **extra)
        if fmt in LOSSLESS_FORMATS and linf > bound:
            dst.unlink()
            return self._record(r, f"failed: saved L-inf {linf} exceeds the bound {bound}", **extra)
        return self._record(r, "protected", **extra)


def _format_of_suffix(suffix: str) -> str:
    s = suffix.lower()
    return {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".tif": "TIFF", ".tiff": "TIFF", ".bmp": "BMP",
            ".webp": "WEBP"}.get(s, "")


def _jpeg_roundtrip_linf(photo, quality: int) -> int:
    import io

    from facepoison.photos import to_image

    buf = io.BytesIO()
    to_image(photo, photo.pixels()).save(buf, format="JPEG", quality=quality, subsampling=0)
    back = np.asarray(Image.open(buf))
    original = photo.pixels()
    back = back if back.ndim == original.ndim else back[..., 0]
    return int(np.abs(back.astype(np.int16) - original.astype(np.int16)).max())


def _ssim(a: np.ndarray, b: np.ndarray) -> float:
    if min(a.shape[:2]) < 7:
        return float("nan")
    return structural_similarity(a, b, data_range=255, channel_axis=2 if a.ndim == 3 else None)


def read_manifest(path: Path) -> dict[str, dict]:
    """Last record per photo (a torn last line from a killed run is ignored)."""
    records: dict[str, dict] = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                rec = json.loads(line)
                records[rec["path"]] = rec
            except (json.JSONDecodeError, KeyError, TypeError):
                continue
    return records


class ManifestWriter:
    """Appends one JSON line per finished photo and makes it durable at once."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        # a line torn by a kill lacks its newline: start on a fresh line
        needs_newline = path.is_file() and path.stat().st_size > 0 and path.read_bytes()[-1:] != b"\n"
        self.fh = open(path, "a")  # noqa: SIM115 - kept open for the run
        if needs_newline:
            self.fh.write("\n")

    def write(self, record: dict) -> None:
        self.fh.write(json.dumps(record) + "\n")
        self.fh.flush()
        os.fsync(self.fh.fileno())

    def close(self) -> None:
        self.fh.close()


def is_done(rec: dict | None, out: Path) -> bool:
    """Finished in an earlier run (and its output still there)."""
    if rec is None or rec.get("status") not in DONE:
        return False
    return "output" not in rec or (out / rec["output"]).is_file()


def protect_photos(items: list[Item], out_dir: Path, settings: ProtectSettings, surrogate: Surrogate,
                   device: torch.device, overwrite: bool = False, quiet: bool = False, rank: int = 0,
                   world: int = 1) -> tuple[dict[str, dict], set[str], int, float]:
    """Protect ``items`` (this rank's shard of them) into ``out_dir``, resuming from its manifest.

    Each finished photo's record is appended to ``manifest.jsonl`` (``manifest.jsonl.rank<r>`` under
    torchrun) as it comes. Returns (records of this run by path, the paths that were to do, faces
    protected, seconds).
    """
    from facepoison.cli.common import Progress

    manifest_path = out_dir / MANIFEST
    previous: dict[str, dict] = {}
    if not overwrite:
        previous = read_manifest(manifest_path)
        for part in sorted(out_dir.glob(f"{MANIFEST}.rank*")):  # parts of an interrupted torchrun
            previous.update(read_manifest(part))
    shard = items[rank::world]
    todo = {it.rel for it in shard if not is_done(previous.get(it.rel), out_dir)}
    groups: dict[str, list[Item]] = {}
    for it in shard:
        groups.setdefault(it.group, []).append(it)
    writer = ManifestWriter(manifest_path if world == 1 else out_dir / f"{MANIFEST}.rank{rank}")

    def detector():
        from recognition.detect import FaceDetector

        return FaceDetector(min_face_size=settings.min_face_size, device=device)

    protector = Protector(surrogate, settings, out_dir, detector)
    bar = Progress(len(todo), "protect", "photo", enabled=not quiet)
    results: dict[str, dict] = {}
    faces = 0
    start = time.perf_counter()
    try:
        for rec in protector.run(list(groups.values()), todo):
            writer.write(rec)
            results[rec["path"]] = rec
            faces += rec.get("faces", 0) if rec["status"] == "protected" else 0
            bar.update(1, faces=faces)
    finally:
        writer.close()
        bar.close()
    return results, todo, faces, time.perf_counter() - start
