"""Where the engine runs and what it loads: devices, torchrun process groups, models from checkpoints,
and the progress callbacks that the CLI fills with progress bars.

Nothing here prints; the CLI layer (``facepoison/cli``) turns progress callbacks into tqdm bars.
"""

from __future__ import annotations

import os
import platform
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.distributed as dist
from torch import nn

from facepoison.errors import UsageError, first_line
from recognition.checkpoint import load_checkpoint
from recognition.heads import create_recognizer
from recognition.models import create_model


class ProgressBar(Protocol):
    """What the engine reports progress to: ``update(n, **postfix)`` and ``close()``."""

    def update(self, n: int = 1, **postfix: Any) -> None:
        """``n`` more units done; ``postfix`` values (e.g. ``loss="0.123"``) are shown beside the bar."""
        ...

    def close(self) -> None:
        """The task is over (finished or interrupted)."""
        ...


ProgressFactory = Callable[[int, str, str], ProgressBar]
"""``(total, description, unit) -> ProgressBar``; the CLI passes one that draws tqdm bars."""


class _Silent:
    def update(self, n: int = 1, **postfix: Any) -> None:
        pass

    def close(self) -> None:
        pass


def no_progress(total: int, desc: str, unit: str) -> ProgressBar:
    """A :data:`ProgressFactory` that reports nothing (the engine's default)."""
    return _Silent()


def resolve_device(name: str | None) -> torch.device:
    """``auto`` (CUDA when available, else CPU), ``cpu``, ``cuda`` or ``cuda:N``; a one-line UsageError otherwise.

    Example:
        >>> resolve_device("cpu")
        device(type='cpu')
    """
    name = name or "auto"
    if name == "auto":
        dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        try:
            dev = torch.device(name)
        except RuntimeError as exc:
            raise UsageError(f"unknown device {name!r}; use auto, cpu or cuda[:N]") from exc
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise UsageError("--device cuda was asked for, but CUDA is not available")
    if dev.type == "cuda":
        tune_cuda()
    return dev


def tune_cuda() -> None:
    """The CUDA backend settings every GPU run of facepoison uses (as timm's and torchvision's training scripts do):
    cuDNN picks the fastest convolution algorithm per input shape (shapes are fixed within a run), and float32
    matrix products and convolutions may use TF32 tensor cores (10-bit mantissa inputs, float32 accumulation)."""
    torch.backends.cudnn.benchmark = True
    torch.backends.cudnn.allow_tf32 = True  # PyTorch's default for convolutions, stated
    torch.set_float32_matmul_precision("high")


def init_distributed(device: str | None) -> tuple[int, int, torch.device]:
    """Join a torchrun process group when WORLD_SIZE > 1 (NCCL on GPU, gloo on CPU).

    Returns:
        (rank, world size, device of this process).
    """
    resolved = resolve_device(device)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, resolved
    if resolved.type == "cuda":
        local = int(os.environ.get("LOCAL_RANK", "0"))
        resolved = torch.device("cuda", local)
        torch.cuda.set_device(resolved)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if resolved.type == "cuda" else "gloo")
    return dist.get_rank(), dist.get_world_size(), resolved


def machine_name(device: torch.device) -> str:
    """The GPU's name, or the CPU architecture, core count and torch version (written into every report)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.machine()} CPU ({os.cpu_count()} cores), torch {torch.__version__}"


def build_classifier(meta: dict[str, Any]) -> nn.Module:
    """An untrained model of the architecture a checkpoint's meta records (classifier or face recognizer)."""
    if meta.get("kind") == "face":
        return create_recognizer(meta["model"], meta["num_classes"], meta["width"], meta["embedding_size"],
                                 meta.get("dropout", 0.0), meta["cosface_s"], meta["cosface_m"],
                                 meta.get("stem_stride", 1))
    return create_model(meta["model"], meta["num_classes"], width=meta.get("width", 64),
                        mean=meta.get("mean"), std=meta.get("std"))


def load_classifier(path: str | os.PathLike, kind: str | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """A checkpoint written by ``facepoison train``: (model, meta).

    Args:
        path: the checkpoint.
        kind: ``"face"`` or ``"classifier"`` to insist on one kind of model.

    Raises:
        UsageError: one line, when the file is missing, empty, truncated, not a facepoison checkpoint, of
            the wrong kind, or its weights do not fit the recorded architecture.
    """
    try:
        model, meta = load_checkpoint(path, build_classifier)
    except (ValueError, KeyError, TypeError) as exc:
        message = first_line(exc)
        if isinstance(exc, (KeyError, TypeError)):
            message = f"checkpoint {path} lacks what rebuilds its model ({message})"
        raise UsageError(message) from exc
    if kind is not None and meta.get("kind", "classifier") != kind:
        what = "a face recognizer" if kind == "face" else "an image classifier"
        raise UsageError(f"checkpoint {path} is not {what} (it is a {meta.get('kind', 'classifier')} model)")
    return model, meta


def check_writable(path: str | os.PathLike) -> None:
    """Refuse, in one line, a file or folder that cannot be created or written at ``path``.

    The nearest existing folder at or above it (``path`` itself when it is a folder) must be a folder and
    writable; a path under a regular file (``notes.txt/out.h5``) or in a read-only folder is refused before
    any work is done, rather than failing with an OS error once the results are ready.

    Example:
        >>> check_writable("/dev/null/x.h5")
        Traceback (most recent call last):
        ...
        facepoison.errors.UsageError: cannot write /dev/null/x.h5: /dev/null is not a folder
    """
    target = Path(path).resolve()
    nearest = target if target.is_dir() else target.parent
    while not nearest.exists():
        nearest = nearest.parent
    if not nearest.is_dir():
        raise UsageError(f"cannot write {path}: {nearest} is not a folder")
    if not os.access(nearest, os.W_OK):
        raise UsageError(f"cannot write {path}: {nearest} is not writable")


def check_output_file(out: str | os.PathLike, inputs: list[str | os.PathLike], overwrite: bool) -> None:
    """Refuse, in one line, an output file that exists (without ``overwrite``), is a folder, lies inside one of
    the input folders, or cannot be written (see :func:`check_writable`); checked before any work is done.

    Args:
        out: the file to be written.
        inputs: input files and folders; ``out`` must not lie inside any of the folders.
        overwrite: allow replacing an existing ``out``.

    Raises:
        UsageError: one line naming the problem.

    Example:
        >>> check_output_file("/dev/null/x.h5", [], overwrite=False)
        Traceback (most recent call last):
        ...
        facepoison.errors.UsageError: cannot write /dev/null/x.h5: /dev/null is not a folder
    """
    out = Path(out)
    if out.is_dir():
        raise UsageError(f"{out} is a folder; give a file name")
    if out.exists() and not overwrite:
        raise UsageError(f"{out} already exists; pass --overwrite to replace it")
    real_out = out.resolve()
    for src in inputs:
        real_src = Path(src).resolve()
        if real_src.is_dir() and real_src in real_out.parents:
            raise UsageError(f"{out} must not be inside the input folder {src}")
    check_writable(out)
