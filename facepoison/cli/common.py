"""Shared CLI plumbing: argument parsing into one-line errors with exit code 2, logging, progress bars.

The engine (devices, torchrun, checkpoints) lives in :mod:`facepoison.runtime` and the step modules; the
CLI only parses, calls and prints.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

import torch.distributed as dist

from facepoison.errors import UsageError, first_line
from facepoison.runtime import ProgressBar, ProgressFactory, no_progress

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
    except (UsageError, ValueError, FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError) as exc:
        if os.environ.get("FACEPOISON_DEBUG"):
            raise
        message = first_line(exc)
        print(f"facepoison {prog}: error: {message}", file=sys.stderr)
        return EXIT_USAGE
    finally:
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()


def setup_logging(verbose: bool) -> None:
    """Log to stderr: INFO and above with ``--verbose``, else warnings only."""
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr)


def add_common(parser: argparse.ArgumentParser) -> None:
    """Add the flags every subcommand has: ``--device``, ``-v/--verbose``, ``-q/--quiet``."""
    parser.add_argument("--device", default=None, help="auto (default), cpu, cuda or cuda:N")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bar")


class Progress:
    """A tqdm bar on stderr (a :class:`~facepoison.runtime.ProgressBar`); silent when not ``enabled``.

    Args:
        total: units of the whole task.
        desc: the bar's label.
        unit: what one unit is (``img``, ``step``, ...).
        enabled: draw the bar.
    """

    def __init__(self, total: int, desc: str, unit: str, enabled: bool = True) -> None:
        self.bar = None
        if enabled:
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=desc, unit=unit, dynamic_ncols=True, file=sys.stderr)

    def update(self, n: int = 1, **postfix: Any) -> None:
        """Advance by ``n`` and show ``postfix`` (e.g. ``loss="0.123"``) beside the bar."""
        if self.bar is not None:
            self.bar.update(n)
            if postfix:
                self.bar.set_postfix(postfix, refresh=False)

    def close(self) -> None:
        """Finish the bar."""
        if self.bar is not None:
            self.bar.close()


def progress_bars(enabled: bool = True, rank0_only: bool = True) -> ProgressFactory:
    """A :data:`~facepoison.runtime.ProgressFactory` drawing tqdm bars (none when disabled, or off rank 0)."""
    if not enabled or (rank0_only and dist.is_available() and dist.is_initialized() and dist.get_rank() != 0):
        return no_progress

    def factory(total: int, desc: str, unit: str) -> ProgressBar:
        return Progress(total, desc, unit)

    return factory
