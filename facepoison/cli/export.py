"""``facepoison export DATA --poisons STORE.h5 --out DIR``: write the poisoned set as lossless PNGs.

The output mirrors the input tree and file names (``train/cat/0001.jpg`` → ``DIR/train/cat/0001.png``).
Data settings (split, image size, subset) are read from the store so the ids line up.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence

from facepoison.cli.common import EXIT_OK, add_common, progress_bars, run_command
from facepoison.exporting import export_poisoned


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``facepoison export`` (every flag it defines is used)."""
    p = argparse.ArgumentParser(prog="facepoison export", description=__doc__)
    p.add_argument("data", help="the data the store was crafted on")
    p.add_argument("--poisons", required=True, help="poison store (STORE.h5)")
    p.add_argument("--out", required=True, help="output folder (must not exist or be empty)")
    p.add_argument("--overwrite", action="store_true", help="allow writing into a non-empty output folder")
    add_common(p)
    return p


def run(args: argparse.Namespace) -> int:
    """Export the poisoned set (see :func:`facepoison.exporting.export_poisoned`); print its summary."""
    summary = export_poisoned(args.data, args.poisons, args.out, args.overwrite, progress_bars(not args.quiet))
    print(json.dumps(summary))
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    """``facepoison export ARGV``: 0 on success, 2 on bad input (one line on stderr)."""
    return run_command("export", build_parser(), run, argv)
