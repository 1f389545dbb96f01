"""Verification benchmark loaders, kept apart from the metrics: LFW (View 2), CFP (FF/FP), insightface ``.bin``.

Each loader returns a :class:`PairSet`: the image sources of every pair, the same-person flags and the fold
of every pair. Decoding and face alignment are the caller's business (LFW needs detection + alignment;
``.bin`` files already hold aligned 112×112 faces).
"""

from __future__ import annotations

import io
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np

BENCHMARK_NAMES = ("LFW", "CFP-FF", "CFP-FP", "AgeDB-30", "VGG2-FP")


@dataclass
class PairSet:
    """Pairs of images for verification.

    Attributes:
        name: benchmark name as in the paper (LFW, CFP-FP, ...).
        left, right: per pair, a path (str) or encoded image bytes.
        same: ``(n,)`` bool.
        folds: ``(n,)`` int fold of each pair.
    """

    name: str
    left: list
    right: list
    same: np.ndarray
    folds: np.ndarray

    def __len__(self) -> int:
        return len(self.same)


def load_lfw_pairs(root: str | Path, pairs_file: str | Path) -> PairSet:
    """LFW View 2: ``<root>/<Name>/<Name>_NNNN.jpg`` and the official ``pairs.txt``.

    The first line of ``pairs.txt`` is ``<folds> <pairs per class per fold>`` (10 300); then each fold lists
    its matched pairs (``name i j``) followed by its mismatched pairs (``name1 i name2 j``).

    Raises:
        ValueError: missing file, malformed line, or a pair naming a missing image (one line).
    """
    root, pairs_file = Path(root), Path(pairs_file)
    if not pairs_file.is_file():
        raise ValueError(f"LFW pairs file {pairs_file} does not exist")
    lines = [ln.split() for ln in pairs_file.read_text().splitlines() if ln.strip()]
    try:
        n_folds, per = int(lines[0][0]), int(lines[0][1])
    except (IndexError, ValueError) as exc:
        raise ValueError(f"{pairs_file}: first line must be '<folds> <pairs per fold>'") from exc
    body = lines[1:]
    if len(body) != n_folds * 2 * per:
        raise ValueError(f"{pairs_file}: expected {n_folds * 2 * per} pairs, found {len(body)}")

    def image(name: str, idx: str) -> str:
        path = root / name / f"{name}_{int(idx):04d}.jpg"
        if not path.is_file():
            raise ValueError(f"LFW pair names a missing image: {path}")
        return str(path)

    left, right, same, folds = [], [], [], []
    for k, parts in enumerate(body):
        if len(parts) == 3:
            left.append(image(parts[0], parts[1]))
            right.append(image(parts[0], parts[2]))
            same.append(True)
        elif len(parts) == 4:
            left.append(image(parts[0], parts[1]))
            right.append(image(parts[2], parts[3]))
            same.append(False)
        else:
            raise ValueError(f"{pairs_file}: malformed pair line {' '.join(parts)!r}")
        folds.append(k // (2 * per))
    return PairSet("LFW", left, right, np.array(same), np.array(folds))


def load_cfp_pairs(root: str | Path, protocol: str = "FP", require_images: bool = True) -> PairSet:
    """CFP (``Protocol/Split/{FF,FP}/NN/{same,diff}.txt``, indexed through ``Pair_list_F.txt``/``_P.txt``).

    ``require_images=False`` skips the check that every image exists (when the faces come from a prepared
    face set, e.g. on a machine that holds only the protocol files and the prepared set).

    Raises:
        ValueError: not the CFP layout, or a pair naming a missing image.
    """
    if protocol not in ("FF", "FP"):
        raise ValueError(f"CFP protocol must be FF or FP, got {protocol!r}")
    proto = Path(root) / "Protocol"
    split = proto / "Split" / protocol
    if not split.is_dir():
        raise ValueError(f"{root} is not in the CFP layout (no Protocol/Split/{protocol}/)")

    def pair_list(name: str) -> dict[int, str]:
        out = {}
        for line in (proto / name).read_text().splitlines():
            if line.strip():
                idx, rel = line.split(maxsplit=1)
                out[int(idx)] = str((proto / rel).resolve())
        return out

    frontal = pair_list("Pair_list_F.txt")
    second = frontal if protocol == "FF" else pair_list("Pair_list_P.txt")
    left, right, same, folds = [], [], [], []
    for fold_dir in sorted(p for p in split.iterdir() if p.is_dir()):
        for fname, flag in (("same.txt", True), ("diff.txt", False)):
            for line in (fold_dir / fname).read_text().splitlines():
                if not line.strip():
                    continue
                a, b = (int(v) for v in line.split(","))
                for path in (frontal[a], second[b]) if require_images else ():
                    if not Path(path).is_file():
                        raise ValueError(f"CFP pair names a missing image: {path}")
                left.append(frontal[a])
                right.append(second[b])
                same.append(flag)
                folds.append(int(fold_dir.name) - 1)
    return PairSet(f"CFP-{protocol}", left, right, np.array(same), np.array(folds))


class RefusedPickle(pickle.UnpicklingError):
    """A pickle asked for a class or function outside the allowed set."""


class _BinUnpickler(pickle.Unpickler):
    """Admits only what an insightface ``.bin`` holds: bytes, lists, tuples, bools and numpy arrays."""

    ALLOWED = {("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "_reconstruct"),
               ("numpy._core.multiarray", "_reconstruct"), ("numpy.core.multiarray", "scalar"),
               ("numpy._core.multiarray", "scalar"), ("builtins", "bytes"), ("builtins", "bytearray"),
               # Python 3 pickles bytes under protocol 2 as _codecs.encode(str, "latin1"): harmless.
               ("_codecs", "encode")}

    def find_class(self, module: str, name: str):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise RefusedPickle(f"refusing to unpickle {module}.{name}")


def load_bin(path: str | Path, name: str) -> PairSet:
    """An insightface ``.bin`` file: a pickle of (list of 2n encoded images, list of n same-person flags).

    Consecutive images form a pair; pairs are split into 10 contiguous folds.

    Raises:
        ValueError: missing file, a refused (unsafe) pickle, or not the expected structure (one line).
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{name}: .bin file {path} does not exist")
    try:
        with open(path, "rb") as fh:
            obj = _BinUnpickler(io.BufferedReader(fh), encoding="bytes").load()
    except RefusedPickle as exc:
        raise ValueError(f"{name}: {path} is not a safe insightface .bin ({exc})") from exc
    except Exception as exc:  # truncated or foreign files raise many types
        raise ValueError(f"{name}: cannot read {path} as an insightface .bin: {exc}") from exc
    if not (isinstance(obj, (tuple, list)) and len(obj) == 2):
        raise ValueError(f"{name}: {path} does not hold (images, flags)")
    images, flags = list(obj[0]), [bool(f) for f in obj[1]]
    if len(images) != 2 * len(flags) or not all(isinstance(b, (bytes, bytearray, np.ndarray)) for b in images):
        raise ValueError(f"{name}: {path} holds {len(images)} images for {len(flags)} pairs (need 2 per pair)")
    n = len(flags)
    images = [bytes(b) if not isinstance(b, bytes) else b for b in images]
    return PairSet(name, images[0::2], images[1::2], np.array(flags), np.arange(n) * 10 // max(1, n))
