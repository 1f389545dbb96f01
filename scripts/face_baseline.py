#!/usr/bin/env python
"""A clean CosFace baseline on the prepared faces: train on the release identities, then report held-out
kNN identification (CelebA-wild identities never trained on) and CFP-FF / CFP-FP verification on CFP folds
never trained on. A CPU sizing run for the face issues, not the full experiment.

Usage:
    facepoison prepare ../shared/data/faces/celeba_wild --out runs/faces/celeba_wild.h5
    facepoison prepare ../shared/data/faces/cfp --layout cfp --out runs/faces/cfp.h5
    python scripts/face_baseline.py --celeba runs/faces/celeba_wild.h5 --cfp-faces runs/faces/cfp.h5 \\
        --cfp-root ../shared/data/faces/cfp --epochs 8 --width 16
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
from torch.utils.data import ConcatDataset, Dataset

from eval.benchmarks import load_cfp_pairs
from eval.identification import gallery_probe_split, knn_topk
from eval.verification import pair_scores, verify
from facepoison.provenance import code_revision
from facepoison.training import face_loss
from recognition.embed import embed_dataset
from recognition.faceset import FaceSet
from recognition.heads import create_recognizer
from recognition.splits import cfp_fold_identities, face_counts, heldout_split, lfw_overlap, write_identities
from recognition.train import TrainConfig, train_classifier


class Relabeled(Dataset):
    def __init__(self, base: Dataset, offset: int) -> None:
        self.base, self.offset = base, offset

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int):
        image, label = self.base[i]
        return image, label + self.offset


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--celeba", required=True)
    p.add_argument("--cfp-faces", required=True)
    p.add_argument("--cfp-root", required=True)
    p.add_argument("--heldout", type=int, default=80)
    p.add_argument("--train-folds", default="1-7")
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--out", default="docs/results/faces_baseline_cpu.json")
    p.add_argument("--exclude-lfw", help="cfp_lfw_name_overlap.tsv: keep CFP identities who are in LFW out of training")
    p.add_argument("--splits-out", help="also write the identity split files used (one identity per line) here")
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    celeba = FaceSet(args.celeba)
    release, heldout = heldout_split(celeba.identities, face_counts(celeba.labels.numpy(), len(celeba.identities)),
                                     args.heldout, min_photos=20, seed=0)
    cfp = FaceSet(args.cfp_faces)
    folds = cfp_fold_identities(args.cfp_root)
    lo, hi = (int(v) for v in args.train_folds.split("-"))
    train_ids = sorted({i for f in range(lo, hi + 1) for i in folds[f]})
    if args.exclude_lfw:
        train_ids = sorted(set(train_ids) - lfw_overlap(args.exclude_lfw))
    eval_folds = [f for f in folds if not lo <= f <= hi]
    if args.splits_out:
        out = Path(args.splits_out)
        out.mkdir(parents=True, exist_ok=True)
        seed_note = f"heldout_split(n={args.heldout}, min_photos=20, seed=0) of {args.celeba}"
        write_identities(out / "celeba_release.txt", release, f"CelebA-wild release identities; {seed_note}")
        write_identities(out / "celeba_heldout.txt", heldout, f"CelebA-wild held-out identities; {seed_note}")
        for f, ids in folds.items():
            write_identities(out / f"cfp_fold{f:02d}.txt", ids, f"CFP identities in FP/FF protocol fold {f}")
    train_sets = [celeba.restrict(release), cfp.restrict(train_ids)]
    train = ConcatDataset([Relabeled(train_sets[0], 0), Relabeled(train_sets[1], len(release))])
    num_classes = len(release) + len(train_ids)
    torch.manual_seed(0)
    model = create_recognizer("resnet18", num_classes, width=args.width)
    cfg = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, warmup_epochs=1,
                      milestones=(0.6, 0.85), crop_padding=4, flip=True)
    t1 = time.perf_counter()
    history = train_classifier(model, train, cfg, loss_fn=face_loss)
    train_s = time.perf_counter() - t1

    # held-out identification
    held = celeba.restrict(heldout)
    emb = embed_dataset(model, held)
    labels = held.labels.numpy()
    g, q = gallery_probe_split(labels, seed=0)
    ident = knn_topk(emb[q], labels[q], emb[g], labels[g], ks=(1, 5))

    # CFP verification on the held-out folds
    cfp_emb = embed_dataset(model, cfp)
    index = {path: i for i, path in enumerate(cfp.paths)}
    verification = {}
    for protocol in ("FF", "FP"):
        pairs = load_cfp_pairs(args.cfp_root, protocol)
        keep, a, b = [], [], []
        for k in range(len(pairs)):
            if pairs.folds[k] + 1 not in eval_folds:
                continue
            ra = str(Path(pairs.left[k]).relative_to(Path(args.cfp_root).resolve()))
            rb = str(Path(pairs.right[k]).relative_to(Path(args.cfp_root).resolve()))
            if ra in index and rb in index:
                keep.append(k)
                a.append(index[ra])
                b.append(index[rb])
        scores = pair_scores(cfp_emb[a], cfp_emb[b])
        res = verify(scores, pairs.same[keep], folds=pairs.folds[keep])
        verification[f"CFP-{protocol}"] = {**res.as_dict(), "pairs_without_face": int(
            sum(1 for k in range(len(pairs)) if pairs.folds[k] + 1 in eval_folds) - len(keep))}
    report = {
        "command": "python scripts/face_baseline.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "machine": f"{platform.machine()} CPU, torch {torch.__version__}", "date": datetime.now(timezone.utc)
        .strftime("%Y-%m-%d %H:%M UTC"), "code_revision": code_revision(),
        "train": {"identities": num_classes, "faces": len(train), "epochs": args.epochs, "width": args.width,
                  "seconds": round(train_s, 1), "final_loss": history[-1]["loss"] if history else None,
                  "images_per_s": history[-1]["images_per_s"] if history else None},
        "identification": {"top1": ident[1], "top5": ident[5], "queries": int(len(q)), "gallery": int(len(g)),
                           "identities": len(heldout), "protocol": "half of each identity's faces in the gallery"},
        "verification": verification, "eval_folds": eval_folds, "total_seconds": round(time.perf_counter() - t0, 1),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
