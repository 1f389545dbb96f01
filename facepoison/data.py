"""Image sets for the general path: ImageFolder trees and the ``cifar-10-batches-py`` format.

Images are decoded once into one uint8 tensor ``(N, C, H, W)``; each sample keeps a stable id (its
index in the sorted listing of the whole split), so subsets, stores and exports all agree on ids.
"""

from __future__ import annotations

import logging
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor
from torch.utils.data import Dataset

from facepoison.errors import UsageError

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp"}
CIFAR_BATCHES = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}


@dataclass
class ImageSet(Dataset):
    """An in-memory labelled image set.

    Attributes:
        images: ``(N, C, H, W)`` uint8.
        labels: ``(N,)`` long.
        ids: ``(N,)`` long, stable sample ids.
        paths: relative output path of each sample (mirrors the input tree; used by ``export``).
        classes: class names, indexed by label.
        root: where the images came from.
    """

    images: Tensor
    labels: Tensor
    ids: Tensor
    paths: list[str]
    classes: list[str]
    root: str = ""

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        return self.images[i], int(self.labels[i])

    @property
    def sample_shape(self) -> tuple[int, ...]:
        """``(C, H, W)`` of every image."""
        return tuple(self.images.shape[1:])

    def get_batch(self, positions: range | list[int] | Tensor) -> tuple[Tensor, Tensor]:
        """The images and labels at ``positions``.

        Shape: ``(B, C, H, W)`` uint8 images and ``(B,)`` long labels.
        """
        idx = torch.as_tensor(list(positions), dtype=torch.long)
        return self.images[idx], self.labels[idx]

    def subset(self, positions: Tensor) -> ImageSet:
        """The samples at ``positions`` (their ids, paths and the class list kept)."""
        pos = positions.tolist()
        return ImageSet(self.images[positions], self.labels[positions], self.ids[positions],
                        [self.paths[i] for i in pos], self.classes, self.root)


def _decode(path: Path, image_size: int | None) -> np.ndarray:
    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            if image_size is not None and im.size != (image_size, image_size):
                w, h = im.size
                scale = image_size / min(w, h)
                im = im.resize((max(image_size, round(w * scale)), max(image_size, round(h * scale))),
                               Image.Resampling.BILINEAR)
                left, top = (im.size[0] - image_size) // 2, (im.size[1] - image_size) // 2
                im = im.crop((left, top, left + image_size, top + image_size))
            return np.asarray(im, dtype=np.uint8).copy()
    except (OSError, UnidentifiedImageError, ValueError) as exc:
        raise UsageError(f"cannot read image {path}: {exc}") from exc


def _split_dir(root: Path, split: str) -> Path:
    if (root / split).is_dir():
        return root / split
    # A bare class-folder tree is accepted as the training split.
    if split == "train" and any(p.is_dir() for p in root.iterdir()):
        return root
    raise UsageError(f"{root} has no '{split}/' folder of class folders")


def _find_cifar_batches(root: Path) -> Path | None:
    for cand in (root, root / "cifar-10-batches-py"):
        if (cand / "data_batch_1").is_file() or (cand / "test_batch").is_file():
            return cand
    return None


def load_cifar_batches(folder: Path, split: str) -> ImageSet:
    """The standard python-pickle CIFAR-10 format. Only numpy arrays, lists and bytes are unpickled."""
    images, labels = [], []
    for name in CIFAR_BATCHES[split]:
        path = folder / name
        if not path.is_file():
            raise UsageError(f"missing CIFAR-10 batch file {path}")
        with open(path, "rb") as fh:
            batch = _CifarUnpickler(fh, encoding="bytes").load()
        images.append(np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
        labels.extend(batch[b"labels"])
    classes = [f"class{i}" for i in range(10)]
    meta = folder / "batches.meta"
    if meta.is_file():
        with open(meta, "rb") as fh:
            classes = [c.decode() for c in _CifarUnpickler(fh, encoding="bytes").load()[b"label_names"]]
    data = torch.from_numpy(np.concatenate(images))
    y = torch.tensor(labels, dtype=torch.long)
    paths = [f"{split}/{classes[c]}/{i:05d}.png" for i, c in enumerate(labels)]
    return ImageSet(data, y, torch.arange(len(y)), paths, classes, str(folder))


class _CifarUnpickler(pickle.Unpickler):
    """Admits only what CIFAR batch files contain (numpy arrays), so a crafted file cannot run code."""

    ALLOWED = {("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "_reconstruct"),
               ("numpy._core.multiarray", "_reconstruct")}

    def find_class(self, module: str, name: str):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name}")


def load_image_folder(root: Path, split: str, image_size: int | None = None) -> ImageSet:
    """``<root>/<split>/<class>/<image>`` (or ``<root>/<class>/<image>`` as the train split)."""
    folder = _split_dir(root, split)
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir())
    files: list[tuple[Path, int]] = []
    for label, name in enumerate(classes):
        for f in sorted((folder / name).rglob("*")):
            if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS:
                files.append((f, label))
    if not files:
        raise UsageError(f"no images found under {folder}")
    arrays = [_decode(f, image_size) for f, _ in files]
    shapes = {a.shape for a in arrays}
    if len(shapes) > 1:
        raise UsageError(f"images under {folder} have different sizes ({', '.join(map(str, sorted(shapes)[:3]))}); "
                         "pass --image-size to resize them")
    data = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
    labels = torch.tensor([lab for _, lab in files], dtype=torch.long)
    paths = [str(f.relative_to(root)) for f, _ in files]
    return ImageSet(data, labels, torch.arange(len(files)), paths, classes, str(root))


def has_split(root: str | Path, split: str) -> bool:
    """Whether ``root`` holds ``split`` (a ``<split>/`` folder, or the CIFAR batch files)."""
    root = Path(root)
    batches = _find_cifar_batches(root) if root.is_dir() else None
    if batches is not None:
        return all((batches / name).is_file() for name in CIFAR_BATCHES.get(split, ["-"]))
    return (root / split).is_dir()


def load_dataset(
    root: str | Path, split: str = "train", image_size: int | None = None, subset: int | None = None, seed: int = 0
) -> ImageSet:
    """Load a split of an ImageFolder tree or of ``cifar-10-batches-py``.

    Args:
        root: a folder with ``train/`` and ``test/`` class folders, a bare class-folder tree (train only),
            or a ``cifar-10-batches-py`` folder (or its parent).
        split: ``train`` or ``test``.
        image_size: resize (shorter side) and centre-crop every image to this size; needed when sizes differ.
        subset: keep this many samples, drawn class-balanced with ``seed``; ids stay those of the full split.
        seed: seed of the subset draw.

    Raises:
        UsageError: missing or empty folder, unreadable image, mixed sizes.
    """
    root = Path(root)
    if not root.is_dir():
        raise UsageError(f"input folder {root} does not exist")
    if split not in CIFAR_BATCHES:
        raise UsageError(f"split must be 'train' or 'test', got {split!r}")
    batches = _find_cifar_batches(root)
    data = load_cifar_batches(batches, split) if batches else load_image_folder(root, split, image_size)
    if subset is not None and subset < len(data):
        data = data.subset(balanced_subset(data.labels, subset, seed))
    log.info("loaded %d images (%d classes) from %s [%s]", len(data), len(data.classes), root, split)
    return data


def balanced_subset(labels: Tensor, n: int, seed: int) -> Tensor:
    """Positions of ``n`` samples, as equal per class as possible, drawn with ``seed``, in sorted order."""
    if n < 1:
        raise UsageError(f"subset must be >= 1, got {n}")
    g = torch.Generator().manual_seed(seed)
    classes = labels.unique()
    per_class = [torch.nonzero(labels == c).flatten() for c in classes]
    per_class = [p[torch.randperm(len(p), generator=g)] for p in per_class]
    take, k = [], 0
    while len(take) < n:  # round-robin over classes keeps the subset balanced
        for p in per_class:
            if k < len(p) and len(take) < n:
                take.append(int(p[k]))
        k += 1
    return torch.tensor(sorted(take), dtype=torch.long)
