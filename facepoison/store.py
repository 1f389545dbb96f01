"""The poison store: quantized perturbations in HDF5, written chunk by chunk, resumable.

Layout of a finished store ``STORE.h5``:

- ``ids`` ``(N,)`` int64: the sample ids, in crafting order;
- ``delta`` ``(N, C, H, W)`` int8 (int16 when ε > 127/255): integer pixel steps, with
  |delta| ≤ round(ε·255) and clean + delta in [0, 255];
- attributes: ``eps``, ``bound``, ``objective``, ``steps``, ``restarts``, ``seed``, ``surrogate_sha256``,
  ``config`` (resolved, JSON), ``code_revision``, ``fingerprint``, ``format``.

While crafting, each process (rank) of each run writes its chunks into a part file of its own,
``STORE.h5.part<rank>-<run>``: an HDF5 file in SWMR mode, flushed after every chunk, so a killed run
keeps every finished chunk (SWMR keeps the file readable after a crash). A new run with the same
fingerprint reads the done-masks of all part files (read-only: a killed writer leaves its file marked
open), crafts only the missing chunks into new part files, and then merges all parts into ``STORE.h5``
(written under a temporary name, then renamed).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from facepoison.errors import UsageError
from recognition.atomic import atomic_path

FORMAT = "facepoison-poison-store/1"


def delta_dtype(bound: int) -> np.dtype:
    """The smallest integer type that holds perturbations of ``bound`` pixel steps: int8 up to 127, else int16.

    Example:
        >>> delta_dtype(8), delta_dtype(255)
        (dtype('int8'), dtype('int16'))
    """
    return np.dtype(np.int8) if bound <= 127 else np.dtype(np.int16)


def part_paths(path: Path, include_tmp: bool = False) -> list[Path]:
    """Part files of an unfinished store (a part still being created ends in ``.tmp``)."""
    parts = sorted(Path(path).parent.glob(Path(path).name + ".part*"))
    return parts if include_tmp else [p for p in parts if p.suffix != ".tmp"]


class StoreWriter:
    """Writes one rank's chunks into a new part file ``<path>.part<rank>-<run>`` (SWMR, flushed per chunk).

    Args:
        path: the final store path.
        ids: sample ids in crafting order.
        sample_shape: ``(C, H, W)``.
        chunk_size: samples per chunk.
        bound: round(ε·255), the largest |delta|.
        attrs: attributes to record; must include ``fingerprint``.
        rank: this process's rank.
    """

    def __init__(
        self, path: Path, ids: np.ndarray, sample_shape: tuple[int, ...], chunk_size: int, bound: int,
        attrs: Mapping[str, Any], rank: int = 0,
    ) -> None:
        self.path = Path(path)
        run = 0
        while any(p.name.startswith(f"{self.path.name}.part{rank}-{run:03d}") for p in part_paths(self.path)):
            run += 1
        self.part = self.path.with_name(f"{self.path.name}.part{rank}-{run:03d}")
        self.chunk_size = chunk_size
        n = len(ids)
        n_chunks = (n + chunk_size - 1) // chunk_size
        with atomic_path(self.part) as tmp, h5py.File(tmp, "w", libver="latest") as f:
            f.create_dataset("ids", data=np.asarray(ids, dtype=np.int64))
            f.create_dataset("delta", shape=(n, *sample_shape), dtype=delta_dtype(bound),
                             chunks=(min(chunk_size, n), *sample_shape), compression="lzf", fillvalue=0)
            f.create_dataset("done", shape=(n_chunks,), dtype=np.uint8, fillvalue=0)
            f.create_dataset("loss", shape=(n_chunks,), dtype=np.float32, fillvalue=np.nan)
            f.attrs.update(_encode_attrs(attrs))
            f.attrs["bound"] = bound
            f.attrs["chunk_size"] = chunk_size
        self.file = h5py.File(self.part, "r+", libver="latest")
        self.file.swmr_mode = True

    def write(self, chunk_index: int, positions: range, delta: Tensor, loss: float) -> None:
        """Write one chunk's quantized perturbations, flush, then mark the chunk done (and flush again)."""
        self.file["delta"][positions.start : positions.stop] = delta.numpy().astype(self.file["delta"].dtype)
        self.file["loss"][chunk_index] = loss
        self.file.flush()
        self.file["done"][chunk_index] = 1
        self.file.flush()

    def close(self) -> None:
        """Close the part file; its finished chunks stay readable for a later run."""
        self.file.close()


def _encode_attrs(attrs: Mapping[str, Any]) -> dict[str, Any]:
    out = {}
    for k, v in attrs.items():
        out[k] = json.dumps(v, sort_keys=True) if isinstance(v, (dict, list, tuple)) else v
    return out


def check_part(part: Path, fingerprint: str) -> None:
    """One-line UsageError unless the part file ``part`` can be read and was made with ``fingerprint``.

    Raises:
        UsageError: an unreadable part, or one of a run with other settings or data.
    """
    try:
        with h5py.File(part, "r", libver="latest", swmr=True) as f:
            found = f.attrs.get("fingerprint")
    except OSError as exc:
        raise UsageError(f"partial store {part} cannot be read ({exc}); delete it or pass --overwrite") from exc
    if found != fingerprint:
        raise UsageError(f"partial store {part} comes from a run with other settings or data; "
                         "delete it or pass --overwrite")


def done_chunks(path: Path, fingerprint: str) -> set[int]:
    """Chunk indices finished by any part file of an interrupted run with the same fingerprint.

    Raises:
        UsageError: a part file of another run (see :func:`check_part`).
    """
    done: set[int] = set()
    for part in part_paths(Path(path)):
        check_part(part, fingerprint)
        with h5py.File(part, "r", libver="latest", swmr=True) as f:
            done.update(np.nonzero(f["done"][:])[0].tolist())
    return done


def merge_parts(path: Path, n_chunks: int) -> None:
    """Merge all part files into the final store (temporary name, then rename) and remove the parts.

    A chunk finished by several parts (a resumed run) is taken from the first. The parts are removed only
    after the store is in place, so a run killed during the merge merges again.

    Raises:
        UsageError: no part files, or a chunk that no part finished.
    """
    path = Path(path)
    parts = part_paths(path)
    if not parts:
        raise UsageError(f"no partial stores found for {path}")
    filled = np.zeros(n_chunks, dtype=bool)
    with (atomic_path(path) as tmp, h5py.File(parts[0], "r", libver="latest", swmr=True) as first,
          h5py.File(tmp, "w") as out):
        ids = first["ids"][:]
        chunk_size = int(first.attrs["chunk_size"])
        delta = out.create_dataset("delta", shape=first["delta"].shape, dtype=first["delta"].dtype,
                                   chunks=first["delta"].chunks, compression="gzip", compression_opts=4)
        out.create_dataset("ids", data=ids)
        losses = np.full(n_chunks, np.nan, dtype=np.float32)
        for key, value in first.attrs.items():
            if key not in ("chunk_size",):
                out.attrs[key] = value
        for part in parts:
            with h5py.File(part, "r", libver="latest", swmr=True) as f:
                for k in np.nonzero(f["done"][:])[0]:
                    if filled[k]:
                        continue
                    sl = slice(k * chunk_size, min(len(ids), (k + 1) * chunk_size))
                    delta[sl] = f["delta"][sl]
                    losses[k] = f["loss"][k]
                    filled[k] = True
        if not filled.all():
            missing = np.nonzero(~filled)[0].tolist()
            raise UsageError(f"cannot finish {path}: chunks {missing[:10]} were never crafted")
        out.create_dataset("chunk_loss", data=losses)
        out.attrs["chunk_size"] = chunk_size
        out.attrs["complete"] = True
    for part in part_paths(path, include_tmp=True):
        part.unlink()


@dataclass
class PoisonSet:
    """A finished store in memory: ids, int16 deltas and attributes.

    Attributes:
        ids: ``(N,)`` int64 sample ids.
        delta: ``(N, C, H, W)`` int16 pixel steps.
        attrs: the store's attributes (``eps``, ``bound``, ``objective``, ``config``, ...).
    """

    ids: np.ndarray
    delta: Tensor
    attrs: dict[str, Any]

    @property
    def bound(self) -> int:
        """The largest |delta| in pixel steps, round(ε·255)."""
        return int(self.attrs["bound"])


def read_attrs(path: str | Path) -> dict[str, Any]:
    """The attributes of a finished store (empty when the file is not a finished facepoison store)."""
    try:
        with h5py.File(path, "r") as f:
            if f.attrs.get("format") != FORMAT or not f.attrs.get("complete", False):
                return {}
            return {k: (v.item() if isinstance(v, np.generic) else v) for k, v in f.attrs.items()}
    except OSError:
        return {}


def load_store(path: str | Path) -> PoisonSet:
    """Read a finished poison store.

    Raises:
        UsageError: missing file, not a poison store, or an unfinished one.
    """
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"poison store {path} does not exist")
    try:
        with h5py.File(path, "r") as f:
            if f.attrs.get("format") != FORMAT:
                raise UsageError(f"{path} is not a facepoison poison store")
            if not f.attrs.get("complete", False):
                raise UsageError(f"poison store {path} is unfinished")
            attrs = {k: (v.item() if isinstance(v, np.generic) else v) for k, v in f.attrs.items()}
            return PoisonSet(ids=f["ids"][:], delta=torch.from_numpy(f["delta"][:].astype(np.int16)), attrs=attrs)
    except OSError as exc:
        raise UsageError(f"cannot read poison store {path}: {exc}") from exc


class PoisonedDataset(Dataset):
    """A view of a dataset with a poison store applied on top: clean + delta, clipped to [0, 255].

    The base dataset yields ``(uint8 image, label)`` and has an ``ids`` tensor; samples whose id is not in
    the store pass through unchanged.

    Args:
        base: a dataset of ``(uint8 (C, H, W) image, label)`` with an ``ids`` tensor.
        poisons: a finished store (:func:`load_store`).

    Raises:
        UsageError: the store shares no id with ``base``, or its images have another shape.
    """

    def __init__(self, base: Dataset, poisons: PoisonSet) -> None:
        self.base = base
        self.poisons = poisons
        row_of = {int(i): r for r, i in enumerate(poisons.ids)}
        self.rows = [row_of.get(int(i), -1) for i in base.ids]  # type: ignore[attr-defined]
        if all(r < 0 for r in self.rows):
            raise UsageError("the poison store shares no sample ids with the data (wrong store or --subset?)")
        shape = tuple(base[0][0].shape)
        if tuple(poisons.delta.shape[1:]) != shape:
            raise UsageError(f"poison store images are {tuple(poisons.delta.shape[1:])}, data images are {shape}")

    @property
    def ids(self) -> Tensor:
        """The base dataset's sample ids."""
        return self.base.ids  # type: ignore[attr-defined]

    @property
    def num_poisoned(self) -> int:
        """How many samples of the base dataset the store perturbs."""
        return sum(r >= 0 for r in self.rows)

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        image, label = self.base[i]
        row = self.rows[i]
        if row >= 0:
            image = (image.to(torch.int16) + self.poisons.delta[row]).clamp_(0, 255).to(torch.uint8)
        return image, label
