"""Shared CLI plumbing: error reporting, devices, torchrun, progress bars, models from checkpoints."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from facepoison.errors import UsageError
from recognition.checkpoint import load_checkpoint
from recognition.heads import create_recognizer
from recognition.models import create_model

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def run_command(
    prog: str, parser: argparse.ArgumentParser, run: Callable[[argparse.Namespace], int], argv: Sequence[str] | None
) -> int:
    """Parse ``argv`` and call ``run(args)``. Bad input becomes one line on stderr and exit code 2.

    Set ``FACEPOISON_DEBUG=1`` to see the traceback instead.
    """
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse has printed its one-line error (or --help)
        return EXIT_USAGE if exc.code else EXIT_OK
    setup_logging(getattr(args, "verbose", False))
    try:
        code = run(args)
        if dist.is_available() and dist.is_initialized():
            # Ranks leave together: a rank that tears its gloo group down while rank 0 still evaluates and
            # saves can abort at exit ("terminate called without an active exception").
            dist.barrier()
        return code
    except (UsageError, ValueError, FileNotFoundError) as exc:
        if os.environ.get("FACEPOISON_DEBUG"):
            raise
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        print(f"facepoison {prog}: error: {message}", file=sys.stderr)
        return EXIT_USAGE
    finally:
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()


def setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr)


def add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default=None, help="auto (default), cpu, cuda or cuda:N")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bar")


def init_distributed(device: str) -> tuple[int, int, torch.device]:
    """Join a torchrun process group when WORLD_SIZE > 1 (NCCL on GPU, gloo on CPU).

    Returns (rank, world size, device of this process).
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


def resolve_device(name: str | None) -> torch.device:
    name = name or "auto"
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError as exc:
        raise UsageError(f"unknown device {name!r}; use auto, cpu or cuda[:N]") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda was asked for, but CUDA is not available")
    return dev


def build_classifier(meta: dict[str, Any]) -> nn.Module:
    """An untrained model of the architecture a checkpoint's meta records (classifier or face recognizer)."""
    if meta.get("kind") == "face":
        return create_recognizer(meta["model"], meta["num_classes"], meta["width"], meta["embedding_size"],
                                 meta.get("dropout", 0.0), meta["cosface_s"], meta["cosface_m"],
                                 meta.get("stem_stride", 1))
    return create_model(meta["model"], meta["num_classes"], width=meta.get("width", 64),
                        mean=meta.get("mean"), std=meta.get("std"))


def load_classifier(path: str) -> tuple[nn.Module, dict[str, Any]]:
    """A classifier checkpoint written by ``facepoison train`` (one-line ValueError when it does not fit)."""
    return load_checkpoint(path, build_classifier)


class Progress:
    """A tqdm bar on rank 0 unless quiet; silent otherwise."""

    def __init__(self, total: int, desc: str, unit: str, enabled: bool = True) -> None:
        self.bar = None
        if enabled:
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=desc, unit=unit, dynamic_ncols=True, file=sys.stderr)

    def update(self, n: int = 1, **postfix: Any) -> None:
        if self.bar is not None:
            self.bar.update(n)
            if postfix:
                self.bar.set_postfix(postfix, refresh=False)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
