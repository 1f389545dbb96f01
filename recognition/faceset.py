"""Prepared face sets: aligned 112×112 faces in one compact HDF5 file.

Layout of ``FACES.h5``:

- ``jpeg`` (N,) variable-length uint8: the aligned face, JPEG-encoded (quality in the ``quality`` attribute);
- ``label`` (N,) int32, index into ``identities``; ``identities`` (K,) strings (folder names, or CFP ids);
- ``path`` (N,) strings, source path relative to the source root; ``pose`` (N,) strings (CFP: frontal/profile);
- ``landmarks`` (N, 5, 2), ``box`` (N, 4) float32 in source-photo pixels; ``score`` (N,) float32;
- ``failed_path`` / ``failed_reason``: photos without a usable face, with the reason;
- attributes: ``format``, ``layout``, ``source``, ``quality``, ``settings`` (JSON).

While preparing, every finished batch is written to its own small file in ``FACES.h5.journal/``
(temporary name, then rename), so a killed run resumes at the first unfinished batch; the journal is
assembled into ``FACES.h5`` at the end.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import h5py
import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from recognition.atomic import atomic_path

FORMAT = "facepoison-faceset/1"
_STR = h5py.string_dtype()
_BYTES = h5py.vlen_dtype(np.uint8)


@dataclass
class FaceRecord:
    """One prepared face, or a photo that yielded none (``reason`` set, the rest empty)."""

    path: str
    identity: str
    pose: str = ""
    jpeg: bytes = b""
    landmarks: np.ndarray = field(default_factory=lambda: np.zeros((5, 2), np.float32))
    box: np.ndarray = field(default_factory=lambda: np.zeros(4, np.float32))
    score: float = 0.0
    reason: str = ""


def encode_jpeg(image_rgb: np.ndarray, quality: int) -> bytes:
    # 4:2:0 chroma keeps ~13k faces well under 64 MiB at quality 85 (measured: about 4 KB a face).
    ok, buf = cv2.imencode(".jpg", np.ascontiguousarray(image_rgb[..., ::-1]),
                           [cv2.IMWRITE_JPEG_QUALITY, quality, cv2.IMWRITE_JPEG_SAMPLING_FACTOR,
                            cv2.IMWRITE_JPEG_SAMPLING_FACTOR_420])
    if not ok:
        raise ValueError("JPEG encoding failed")
    return buf.tobytes()


def decode_jpeg(data: bytes | np.ndarray) -> np.ndarray:
    img = cv2.imdecode(np.frombuffer(bytes(data), np.uint8), cv2.IMREAD_COLOR)
    if img is None:
        raise ValueError("corrupt JPEG in face set")
    return img[..., ::-1]


def journal_dir(out: Path) -> Path:
    return out.with_name(out.name + ".journal")


def write_journal_batch(out: Path, index: int, records: list[FaceRecord]) -> None:
    """Write one finished batch atomically (temporary name, then rename)."""
    folder = journal_dir(out)
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / f"batch_{index:06d}.h5"
    with atomic_path(final) as tmp, h5py.File(tmp, "w") as f:
        f.create_dataset("path", data=[r.path for r in records], dtype=_STR)
        f.create_dataset("identity", data=[r.identity for r in records], dtype=_STR)
        f.create_dataset("pose", data=[r.pose for r in records], dtype=_STR)
        f.create_dataset("reason", data=[r.reason for r in records], dtype=_STR)
        jpeg = f.create_dataset("jpeg", (len(records),), dtype=_BYTES)
        for i, r in enumerate(records):
            jpeg[i] = np.frombuffer(r.jpeg, np.uint8)
        f.create_dataset("landmarks", data=np.stack([r.landmarks for r in records]).astype(np.float32))
        f.create_dataset("box", data=np.stack([r.box for r in records]).astype(np.float32))
        f.create_dataset("score", data=np.array([r.score for r in records], np.float32))


def finished_batches(out: Path) -> set[int]:
    folder = journal_dir(out)
    if not folder.is_dir():
        return set()
    return {int(p.stem.split("_")[1]) for p in folder.glob("batch_*.h5")}


def assemble(out: Path, identities: list[str], attrs: dict[str, Any]) -> dict[str, int]:
    """Merge the journal into ``out`` (temporary name, then rename) and remove the journal.

    Returns counts: faces, failed photos, identities with at least one face.
    """
    folder = journal_dir(out)
    parts = sorted(folder.glob("batch_*.h5"))
    cols: dict[str, list] = {k: [] for k in ("path", "identity", "pose", "reason", "jpeg", "landmarks", "box",
                                             "score")}
    for part in parts:
        with h5py.File(part, "r") as f:
            for k in cols:
                values = f[k][:]
                cols[k].extend(v.decode() if isinstance(v, bytes) else v for v in values)
    ok = [i for i, r in enumerate(cols["reason"]) if not r]
    bad = [i for i, r in enumerate(cols["reason"]) if r]
    index = {name: i for i, name in enumerate(identities)}
    with atomic_path(out) as tmp, h5py.File(tmp, "w") as f:
        jpeg = f.create_dataset("jpeg", (len(ok),), dtype=_BYTES)
        for j, i in enumerate(ok):
            jpeg[j] = cols["jpeg"][i]
        f.create_dataset("label", data=np.array([index[cols["identity"][i]] for i in ok], np.int32))
        f.create_dataset("identities", data=identities, dtype=_STR)
        f.create_dataset("path", data=[cols["path"][i] for i in ok], dtype=_STR)
        f.create_dataset("pose", data=[cols["pose"][i] for i in ok], dtype=_STR)
        f.create_dataset("landmarks", data=np.array([cols["landmarks"][i] for i in ok], np.float32).reshape(-1, 5, 2))
        f.create_dataset("box", data=np.array([cols["box"][i] for i in ok], np.float32).reshape(-1, 4))
        f.create_dataset("score", data=np.array([cols["score"][i] for i in ok], np.float32))
        f.create_dataset("failed_path", data=[cols["path"][i] for i in bad], dtype=_STR)
        f.create_dataset("failed_reason", data=[cols["reason"][i] for i in bad], dtype=_STR)
        for k, v in attrs.items():
            f.attrs[k] = json.dumps(v) if isinstance(v, (dict, list)) else v
        f.attrs["format"] = FORMAT
    shutil.rmtree(folder)
    faces_per_identity = np.bincount([index[cols["identity"][i]] for i in ok], minlength=len(identities))
    return {"faces": len(ok), "failed": len(bad), "identities": int((faces_per_identity > 0).sum())}


class FaceSet(Dataset):
    """A prepared face set in memory: JPEG bytes decoded on access to ``(uint8 (3,112,112), label)``.

    Attributes:
        labels: ``(N,)`` long; ``identities``: names; ``paths``, ``poses``: per face; ``ids``: ``arange(N)``.
    """

    def __init__(self, path: str | Path, indices: np.ndarray | None = None) -> None:
        path = Path(path)
        if not path.is_file():
            raise ValueError(f"face set {path} does not exist")
        try:
            with h5py.File(path, "r") as f:
                if f.attrs.get("format") != FORMAT:
                    raise ValueError(f"{path} is not a facepoison face set")
                sel = slice(None) if indices is None else np.asarray(indices)
                self.jpeg = list(f["jpeg"][sel])
                self.labels = torch.from_numpy(f["label"][sel].astype(np.int64))
                self.identities = [s.decode() for s in f["identities"][:]]
                self.paths = [s.decode() for s in f["path"][sel]]
                self.poses = [s.decode() for s in f["pose"][sel]]
                self.attrs = dict(f.attrs)
        except OSError as exc:
            raise ValueError(f"cannot read face set {path}: {exc}") from exc
        self.ids = torch.arange(len(self.labels)) if indices is None else torch.as_tensor(np.asarray(indices))

    def restrict(self, identities: list[str]) -> FaceSet:
        """The faces of ``identities`` only, relabelled 0..K-1 in the given order (ids are kept)."""
        unknown = sorted(set(identities) - set(self.identities))
        if unknown:
            raise ValueError(f"identities not in the face set: {', '.join(unknown[:5])}")
        new_label = {self.identities.index(name): k for k, name in enumerate(identities)}
        keep = [i for i, lab in enumerate(self.labels.tolist()) if lab in new_label]
        return self._subset(keep, [new_label[int(self.labels[i])] for i in keep], list(identities))

    def cap(self, per_identity: int) -> FaceSet:
        """At most the first ``per_identity`` faces (in stored order) of each identity; labels are kept."""
        if per_identity < 1:
            raise ValueError(f"faces per identity must be at least 1, got {per_identity}")
        seen: dict[int, int] = {}
        keep = []
        for i, lab in enumerate(self.labels.tolist()):
            if seen.get(lab, 0) < per_identity:
                seen[lab] = seen.get(lab, 0) + 1
                keep.append(i)
        return self._subset(keep, [int(self.labels[i]) for i in keep], list(self.identities))

    def _subset(self, keep: list[int], labels: list[int], identities: list[str]) -> FaceSet:
        sub = object.__new__(FaceSet)
        sub.jpeg = [self.jpeg[i] for i in keep]
        sub.labels = torch.tensor(labels, dtype=torch.long)
        sub.identities = identities
        sub.paths = [self.paths[i] for i in keep]
        sub.poses = [self.poses[i] for i in keep]
        sub.attrs = self.attrs
        sub.ids = self.ids[keep]
        return sub

    @staticmethod
    def concat(parts: dict[str, FaceSet]) -> FaceSet:
        """One set from several, identities named ``<part>/<identity>`` so they cannot collide; ids run on
        across parts (``ids`` of part k are offset by the sizes of the parts before it)."""
        out = object.__new__(FaceSet)
        out.jpeg, out.identities, out.paths, out.poses, labels = [], [], [], [], []
        for name, part in parts.items():
            labels.append(part.labels + len(out.identities))
            out.identities += [f"{name}/{identity}" for identity in part.identities]
            out.jpeg += part.jpeg
            out.paths += [f"{name}/{p}" for p in part.paths]
            out.poses += part.poses
        out.labels = torch.cat(labels) if labels else torch.zeros(0, dtype=torch.long)
        out.ids = torch.arange(len(out.labels))
        out.attrs = {"format": FORMAT, "parts": json.dumps(list(parts))}
        return out

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def classes(self) -> list[str]:
        """The identities (the crafting and training code calls them classes)."""
        return self.identities

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return (3, 112, 112)

    def get_batch(self, positions) -> tuple[Tensor, Tensor]:
        """``(uint8 (B, 3, 112, 112), labels (B,))`` of the faces at ``positions``."""
        pos = [int(i) for i in positions]
        images = np.stack([decode_jpeg(self.jpeg[i]) for i in pos]) if pos else np.zeros((0, 112, 112, 3), np.uint8)
        return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), self.labels[pos]

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        return torch.from_numpy(decode_jpeg(self.jpeg[i]).copy()).permute(2, 0, 1), int(self.labels[i])
