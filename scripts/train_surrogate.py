#!/usr/bin/env python
"""Train the bundled default surrogate of ``facepoison protect`` on the release identities, and export it in
fp16 into the package.

Usage (prepared face sets from ``facepoison prepare``; resumes after an interruption):
    python scripts/train_surrogate.py --config configs/surrogate_default.yaml \\
        --celeba runs/faces/celeba_wild.h5 --cfp-faces runs/faces/cfp.h5 --cfp-root ../shared/data/faces/cfp \\
        --exclude-lfw ../shared/data/faces/cfp/cfp_lfw_name_overlap.tsv \\
        --out runs/surrogate/default.pt --bundle facepoison/weights/default_surrogate.pt
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from facepoison.config import TrainCommandConfig, load_config
from facepoison.runtime import init_distributed
from facepoison.training import train_checkpoint
from recognition.checkpoint import export_half
from recognition.release import release_split


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True)
    p.add_argument("--celeba", required=True)
    p.add_argument("--cfp-faces", required=True)
    p.add_argument("--cfp-root", required=True)
    p.add_argument("--exclude-lfw")
    p.add_argument("--heldout", type=int, default=80)
    p.add_argument("--out", required=True, help="full-precision checkpoint (resumable while training)")
    p.add_argument("--bundle", help="also write the fp16 copy here")
    p.add_argument("--device", default="auto")
    args = p.parse_args(argv)
    cfg = load_config(TrainCommandConfig, args.config, {"data.root": args.celeba, "device": args.device})
    split = release_split(args.celeba, args.cfp_faces, args.cfp_root, n_heldout=args.heldout,
                          exclude_lfw=args.exclude_lfw)
    out = Path(args.out)
    split.write(out.parent / "splits", f"release_split(n_heldout={args.heldout}, seed=0, CFP folds 1-7)")
    print(f"release set: {len(split.release)} faces of {len(split.release.identities)} identities", flush=True)
    _, _, device = init_distributed(cfg.device)
    if not out.exists():
        train_checkpoint(cfg, split.release, None, out, device)
    if args.bundle:
        info = export_half(out, args.bundle)
        print(json.dumps(info))
    return 0


if __name__ == "__main__":
    sys.exit(main())
