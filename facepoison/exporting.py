"""Writing a poisoned set as lossless PNGs that mirror the input tree: the engine of ``facepoison export``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from facepoison.data import load_dataset
from facepoison.errors import UsageError
from facepoison.runtime import ProgressFactory, check_writable, no_progress
from facepoison.store import PoisonedDataset, load_store
from recognition.atomic import atomic_path


def _is_within(child: Path, parent: Path) -> bool:
    try:
        child.resolve().relative_to(parent.resolve())
        return True
    except ValueError:
        return False


def check_export(root: Path, out: Path, overwrite: bool) -> None:
    """One-line UsageError for a missing input, an output inside it, a non-empty or unwritable output."""
    if not root.is_dir():
        raise UsageError(f"input folder {root} does not exist")
    if _is_within(out, root):
        raise UsageError(f"output folder {out} is inside the input folder {root}; choose another place")
    if out.exists() and not out.is_dir():
        raise UsageError(f"output {out} exists and is not a folder")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise UsageError(f"output folder {out} is not empty; pass --overwrite to write into it")
    check_writable(out)


def export_poisoned(data: str | Path, poisons: str | Path, out: str | Path, overwrite: bool = False,
                    progress: ProgressFactory = no_progress) -> dict[str, Any]:
    """Write ``data`` with the store ``poisons`` applied as PNGs under ``out`` (``a/b.jpg`` → ``out/a/b.png``).

    Data settings (split, image size, subset) are read from the store so the ids line up. Every image is
    checked against the store's bound before it is written.

    Args:
        data: the image folder the store was crafted on.
        poisons: the poison store.
        out: the output folder (absent or empty unless ``overwrite``).
        overwrite: allow writing into a non-empty ``out``.
        progress: a progress bar in images.

    Raises:
        UsageError: see :func:`check_export`; a missing or unfinished store; a store that does not fit the data.

    Returns:
        A summary: output, images, poisoned images, largest absolute difference, bound.
    """
    root, out = Path(data), Path(out)
    check_export(root, out, overwrite)
    store = load_store(poisons)
    data_cfg = json.loads(store.attrs["config"])["data"]
    images = load_dataset(root, data_cfg["split"], data_cfg.get("image_size"), data_cfg.get("subset"),
                          data_cfg.get("subset_seed", 0))
    poisoned = PoisonedDataset(images, store)
    bound = store.bound
    bar = progress(len(images), "export", "img")
    worst = 0
    for i in range(len(images)):
        image, _ = poisoned[i]
        diff = int((image.to(torch.int16) - images.images[i].to(torch.int16)).abs().max())
        if diff > bound:  # cannot happen with a valid store; refuse rather than release a wrong image
            raise UsageError(f"sample {images.paths[i]} would differ by {diff} > {bound} from its original")
        worst = max(worst, diff)
        target = out / Path(images.paths[i]).with_suffix(".png")
        target.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(target) as tmp:
            Image.fromarray(np.ascontiguousarray(image.permute(1, 2, 0).numpy())).save(tmp, format="PNG")
        bar.update()
    bar.close()
    return {"out": str(out), "images": len(images), "poisoned": poisoned.num_poisoned, "max_abs_diff": worst,
            "bound": bound}
