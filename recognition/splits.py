"""Deterministic identity splits: files that name identities, never images.

- CelebA-style sets: held-out identification identities (with at least ``min_photos`` faces) drawn with a
  seed; every other identity is a release (training) identity.
- CFP: identities grouped by the fold of the official frontal-profile protocol they appear in, so a model
  can train on some folds and be verified on the others; names that also appear in LFW can be excluded.
"""

from __future__ import annotations

import csv
import re
from collections import Counter
from pathlib import Path

import numpy as np


def heldout_split(identities: list[str], face_counts: list[int], n_heldout: int, min_photos: int = 20,
                  seed: int = 0) -> tuple[list[str], list[str]]:
    """(release identities, held-out identities), both sorted. Held-out ones are drawn among those with at
    least ``min_photos`` faces.

    Raises:
        ValueError: fewer eligible identities than ``n_heldout``.
    """
    eligible = sorted(name for name, n in zip(identities, face_counts, strict=True) if n >= min_photos)
    if len(eligible) < n_heldout:
        raise ValueError(f"only {len(eligible)} identities have >= {min_photos} faces; cannot hold out {n_heldout}")
    rng = np.random.default_rng(seed)
    heldout = sorted(rng.choice(eligible, size=n_heldout, replace=False).tolist())
    release = sorted(set(identities) - set(heldout))
    return release, heldout


def _pair_list(path: Path) -> dict[int, str]:
    """Pair_list_{F,P}.txt: '<index> <relative image path>' → index → identity folder (e.g. '001')."""
    out = {}
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        idx, rel = line.split(maxsplit=1)
        m = re.search(r"Images/([^/]+)/", rel)
        if not m:
            raise ValueError(f"unexpected line in {path}: {line!r}")
        out[int(idx)] = m.group(1)
    return out


def cfp_fold_identities(cfp_root: str | Path, protocol: str = "FP") -> dict[int, list[str]]:
    """Fold number (1..10) → sorted CFP identity ids appearing in that fold's pairs."""
    root = Path(cfp_root) / "Protocol"
    if not (root / "Split" / protocol).is_dir():
        raise ValueError(f"{cfp_root} has no Protocol/Split/{protocol}/ (not the CFP layout?)")
    frontal = _pair_list(root / "Pair_list_F.txt")
    second = frontal if protocol == "FF" else _pair_list(root / "Pair_list_P.txt")
    folds: dict[int, list[str]] = {}
    for fold_dir in sorted((root / "Split" / protocol).iterdir()):
        ids: set[str] = set()
        for name in ("same.txt", "diff.txt"):
            for line in (fold_dir / name).read_text().splitlines():
                if line.strip():
                    a, b = (int(v) for v in line.split(","))
                    ids.update((frontal[a], second[b]))
        folds[int(fold_dir.name)] = sorted(ids)
    return folds


def lfw_overlap(tsv: str | Path) -> set[str]:
    """CFP ids of people who are also in LFW (``cfp_lfw_name_overlap.tsv``)."""
    with open(tsv, newline="") as fh:
        return {row["cfp_id"] for row in csv.DictReader(fh, delimiter="\t")}


def write_identities(path: str | Path, names: list[str], comment: str = "") -> None:
    """One identity per line; ``#`` lines are comments (read back by ``facepoison train --identities``)."""
    lines = [f"# {c}" for c in comment.splitlines()] + list(names)
    Path(path).write_text("\n".join(lines) + "\n")


def face_counts(labels: list[int] | np.ndarray, n_identities: int) -> list[int]:
    counts = Counter(int(x) for x in labels)
    return [counts.get(i, 0) for i in range(n_identities)]
