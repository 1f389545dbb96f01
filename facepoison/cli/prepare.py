"""``facepoison prepare SRC --out FACES.h5 [--layout folders|cfp]``: detect, 5-point-align and store faces.

Each photo keeps its identity, source path, landmarks and detection score; the main face of a photo is
its largest. Photos with no usable face are listed in the file and counted in the summary line. The run
is resumable: finished batches are journaled next to the output.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence

from facepoison.cli.common import EXIT_OK, add_common, progress_bars, run_command
from facepoison.preparing import LAYOUTS, PrepareSettings, prepare_faces


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``facepoison prepare`` (every flag it defines is used)."""
    p = argparse.ArgumentParser(prog="facepoison prepare", description=__doc__)
    p.add_argument("src", help="identity-labelled photo tree")
    p.add_argument("--out", required=True, help="face set to write (FACES.h5)")
    p.add_argument("--layout", default="folders", help=f"one of {', '.join(LAYOUTS)}: <identity>/<image> (default) "
                   "or the CFP layout")
    p.add_argument("--min-face-size", type=int, default=20, help="smallest face side in pixels (default 20)")
    p.add_argument("--score-threshold", type=float, default=0.9, help="lowest detection score kept (default 0.9)")
    p.add_argument("--quality", type=int, default=85,
                   help="JPEG quality of the stored faces (default 85, 4:2:0; about 4 KB a face)")
    p.add_argument("--batch-size", type=int, default=32, help="photos per detection batch and journal entry")
    p.add_argument("--overwrite", action="store_true", help="replace an existing face set")
    add_common(p)
    return p


def run(args: argparse.Namespace) -> int:
    """Prepare the face set (see :func:`facepoison.preparing.prepare_faces`); print its summary."""
    settings = PrepareSettings(layout=args.layout, min_face_size=args.min_face_size,
                               score_threshold=args.score_threshold, quality=args.quality, batch_size=args.batch_size)
    summary = prepare_faces(args.src, args.out, settings, device=args.device, overwrite=args.overwrite,
                            progress=progress_bars(not args.quiet))
    print(json.dumps(summary))
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    """``facepoison prepare ARGV``: 0 on success, 2 on bad input (one line on stderr)."""
    return run_command("prepare", build_parser(), run, argv)
