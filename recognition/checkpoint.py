"""Checkpoints: a state dict plus a JSON-able ``meta`` dict, loadable with ``torch.load(weights_only=True)``.

``meta`` carries what is needed to rebuild the model (``model``, ``num_classes``, ``width``, …), so a
checkpoint is self-describing; a JSON copy is written next to it for people and tools.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from recognition.atomic import atomic_path, atomic_write


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` to ``path`` atomically (see :mod:`recognition.atomic`)."""
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message, or its type's name when the message is empty."""
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def save_checkpoint(path: str | Path, model: nn.Module, meta: dict[str, Any]) -> None:
    """Write ``{"state_dict", "meta"}`` to ``path`` and ``meta`` as JSON to ``path`` + ``.json`` (atomic)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_torch_save({"state_dict": model.state_dict(), "meta": json.loads(json.dumps(meta))}, path)
    atomic_write(path.with_name(path.name + ".json"), json.dumps(meta, indent=2, sort_keys=True))


def load_checkpoint(
    path: str | Path, build: Callable[[dict[str, Any]], nn.Module], map_location: str | torch.device = "cpu"
) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a model from a checkpoint.

    Args:
        path: checkpoint file.
        build: meta → an untrained model of the recorded architecture.

    Raises:
        ValueError: missing or unreadable file, or weights that do not fit the architecture (one line).
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"checkpoint {path} does not exist")
    if path.stat().st_size == 0:
        raise ValueError(f"checkpoint {path} is empty")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises many types for corrupt files, some with an empty message (EOFError)
        raise ValueError(f"cannot load checkpoint {path} (truncated or not a checkpoint): {first_line(exc)}") from exc
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt or not isinstance(ckpt.get("meta"), dict):
        raise ValueError(f"{path} is not a facepoison checkpoint (no state_dict/meta)")
    meta = ckpt["meta"]
    try:
        model = build(meta)
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"checkpoint {path} does not describe a model this version can build: {first_line(exc)}") \
            from exc
    try:
        model.load_state_dict(ckpt["state_dict"], strict=True)
    except RuntimeError as exc:
        raise ValueError(f"checkpoint {path} does not match the model {meta.get('model')!r}: {first_line(exc)}") \
            from exc
    return model, meta


def export_half(src: str | Path, dst: str | Path) -> dict[str, Any]:
    """Copy a checkpoint with its floating-point tensors in fp16 (half the size; loading casts them back).

    The meta keeps what rebuilds the model and drops the training history. Returns the written size.
    """
    ckpt = torch.load(src, map_location="cpu", weights_only=True)
    state = {k: v.half() if v.is_floating_point() else v for k, v in ckpt["state_dict"].items()}
    keep = ("kind", "model", "width", "num_classes", "classes", "image_shape", "embedding_size", "dropout",
            "cosface_s", "cosface_m", "stem_stride", "config", "train_seconds", "code_revision")
    meta = {k: ckpt["meta"][k] for k in keep if k in ckpt["meta"]} | {"dtype": "float16"}
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    atomic_torch_save({"state_dict": state, "meta": meta}, dst)
    return {"path": str(dst), "bytes": dst.stat().st_size}
