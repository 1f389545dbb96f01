"""``facepoison export DATA --poisons STORE.h5 --out DIR``: write the poisoned set as lossless PNGs.

The output mirrors the input tree and file names (``train/cat/0001.jpg`` → ``DIR/train/cat/0001.png``).
Data settings (split, image size, subset) are read from the store so the ids line up.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from facepoison.cli.common import EXIT_OK, Progress, add_common, run_command
from facepoison.data import load_dataset
from facepoison.errors import UsageError
from facepoison.store import PoisonedDataset, load_store


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="facepoison export", description=__doc__)
    p.add_argument("data", help="the data the store was crafted on")
    p.add_argument("--poisons", required=True, help="poison store (STORE.h5)")
    p.add_argument("--out", required=True, help="output folder (must not exist or be empty)")
    p.add_argument("--overwrite", action="store_true", help="allow writing into a non-empty output folder")
    add_common(p)
    return p


def _is_within(child: Path, parent: Path) -> bool:
    try:
        child.resolve().relative_to(parent.resolve())
        return True
    except ValueError:
        return False


def run(args: argparse.Namespace) -> int:
    poisons = load_store(args.poisons)
    data_cfg = json.loads(poisons.attrs["config"])["data"]
    root, out = Path(args.data), Path(args.out)
    if not root.is_dir():
        raise UsageError(f"input folder {root} does not exist")
    if _is_within(out, root):
        raise UsageError(f"output folder {out} is inside the input folder {root}; choose another place")
    if out.exists() and any(out.iterdir()) and not args.overwrite:
        raise UsageError(f"output folder {out} is not empty; pass --overwrite to write into it")
    data = load_dataset(root, data_cfg["split"], data_cfg.get("image_size"), data_cfg.get("subset"),
                        data_cfg.get("subset_seed", 0))
    poisoned = PoisonedDataset(data, poisons)
    bound = poisons.bound
    bar = Progress(len(data), "export", "img", enabled=not args.quiet)
    worst = 0
    for i in range(len(data)):
        image, _ = poisoned[i]
        diff = int((image.to(torch.int16) - data.images[i].to(torch.int16)).abs().max())
        if diff > bound:  # cannot happen with a valid store; refuse rather than release a wrong image
            raise UsageError(f"sample {data.paths[i]} would differ by {diff} > {bound} from its original")
        worst = max(worst, diff)
        target = out / Path(data.paths[i]).with_suffix(".png")
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(target.name + ".tmp")
        Image.fromarray(np.ascontiguousarray(image.permute(1, 2, 0).numpy())).save(tmp, format="PNG")
        os.replace(tmp, target)
        bar.update()
    bar.close()
    print(json.dumps({"out": str(out), "images": len(data), "poisoned": poisoned.num_poisoned,
                      "max_abs_diff": worst, "bound": bound}))
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    return run_command("export", build_parser(), run, argv)
