"""The face experiments' identity split, built from the prepared CelebA-wild and CFP face sets.

- **release**: the identities whose photos get protected and trained on: CelebA-wild identities not held
  out, plus the CFP identities of the training FP folds, minus CFP people who are also in LFW;
- **held-out**: CelebA-wild identities with at least ``min_photos`` faces, for kNN identification;
- **evaluation folds**: the CFP FF/FP protocol folds no release identity appears in.

Identities are named ``celeba/<id>`` and ``cfp/<id>`` in the combined release set.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from recognition.faceset import FaceSet
from recognition.splits import cfp_fold_identities, face_counts, heldout_split, lfw_overlap, write_identities


@dataclass
class ReleaseSplit:
    release: FaceSet
    heldout: FaceSet
    celeba_release: list[str]
    celeba_heldout: list[str]
    cfp_release: list[str]
    cfp_folds: dict[int, list[str]]
    eval_folds: list[int]

    def write(self, folder: str | Path, note: str) -> None:
        """The identity lists, one file each, for ``facepoison train --identities`` and for people."""
        out = Path(folder)
        out.mkdir(parents=True, exist_ok=True)
        write_identities(out / "celeba_release.txt", self.celeba_release, f"CelebA-wild release identities; {note}")
        write_identities(out / "celeba_heldout.txt", self.celeba_heldout, f"CelebA-wild held-out identities; {note}")
        write_identities(out / "cfp_release.txt", self.cfp_release, f"CFP release identities; {note}")


def release_split(celeba: str | Path, cfp: str | Path, cfp_root: str | Path, n_heldout: int = 80,
                  min_photos: int = 20, seed: int = 0, train_folds: tuple[int, int] = (1, 7),
                  exclude_lfw: str | Path | None = None, celeba_identities: int | None = None,
                  cfp_identities: int | None = None, faces_per_identity: int | None = None) -> ReleaseSplit:
    """Split the prepared sets (``FACES.h5`` paths) into release and held-out parts.

    Args:
        train_folds: inclusive range of CFP FP folds whose identities are released (trained on).
        exclude_lfw: ``cfp_lfw_name_overlap.tsv``; those CFP identities are kept out of the release set.
        celeba_identities, cfp_identities: keep only the first this many CelebA / CFP release identities
            (CPU-sized runs).
        faces_per_identity: keep only the first this many faces of each release identity (CPU-sized runs
            over many identities); held-out identities keep all their faces.
    """
    celeba_set = FaceSet(celeba)
    release, heldout = heldout_split(celeba_set.identities, face_counts(celeba_set.labels.numpy(),
                                     len(celeba_set.identities)), n_heldout, min_photos=min_photos, seed=seed)
    if celeba_identities is not None:
        release = release[:celeba_identities]
    cfp_set = FaceSet(cfp)
    folds = cfp_fold_identities(cfp_root)
    lo, hi = train_folds
    cfp_ids = sorted({i for f in range(lo, hi + 1) for i in folds.get(f, [])})
    if exclude_lfw:
        cfp_ids = sorted(set(cfp_ids) - lfw_overlap(exclude_lfw))
    cfp_ids = [i for i in cfp_ids if i in set(cfp_set.identities)]
    if cfp_identities is not None:
        cfp_ids = cfp_ids[:cfp_identities]
    combined = FaceSet.concat({"celeba": celeba_set.restrict(release), "cfp": cfp_set.restrict(cfp_ids)})
    if faces_per_identity is not None:
        combined = combined.cap(faces_per_identity)
        combined.ids = torch.arange(len(combined))  # poison stores index the release set by position
    return ReleaseSplit(release=combined, heldout=celeba_set.restrict(heldout), celeba_release=release,
                        celeba_heldout=heldout, cfp_release=cfp_ids, cfp_folds=folds,
                        eval_folds=[f for f in sorted(folds) if not lo <= f <= hi])
