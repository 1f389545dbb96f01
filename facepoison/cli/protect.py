"""``facepoison protect INPUT... --out OUT_DIR``: protect every face in a folder of photos against face recognizers.

Each face gets a small perturbation (default: identity-wise error-minimizing noise, one pattern per person, the
winner of the face objective ablation) that makes a recognizer trained on the photos learn the pattern instead of
the face.

The output folder mirrors the inputs' relative tree and file names; inputs are never modified. Each
finished photo is written atomically and gets a line in ``OUT_DIR/manifest.jsonl`` at once, so a killed
run (even with kill -9) resumes where it stopped; ``--overwrite`` redoes finished photos.

Strength presets (``--eps`` and ``--steps`` override them)::

    low   eps 4/255,  10 steps
    mid   eps 8/255,  15 steps   (default)
    high  eps 16/255, 30 steps

Exit codes: 0 every photo handled, 1 some photos failed (listed at the end), 2 usage error (nothing written).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import torch.distributed as dist

from facepoison.cli.common import EXIT_FAILED, EXIT_OK, add_common, progress_bars, run_command
from facepoison.config import parse_eps
from facepoison.errors import UsageError
from facepoison.objectives import OBJECTIVES
from facepoison.protect import (
    DEFAULT_SURROGATE,
    DONE,
    IDENTITY_MODES,
    MANIFEST,
    PRESETS,
    Protector,
    ProtectSettings,
    StageClock,
    Surrogate,
    collect,
    merge_rank_manifests,
    protect_photos,
    read_manifest,
)
from facepoison.runtime import check_writable, init_distributed


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``facepoison protect`` (every flag it defines is used)."""
    p = argparse.ArgumentParser(prog="facepoison protect", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="photo folders (walked recursively) and files")
    p.add_argument("--out", required=True, help="output folder (never inside an input folder)")
    p.add_argument("--strength", choices=sorted(PRESETS), default="mid", help="preset of eps and steps")
    p.add_argument("--eps", help="L-inf bound in /255 units (overrides the preset), e.g. 8")
    p.add_argument("--steps", type=int, help="crafting steps (overrides the preset)")
    p.add_argument("--surrogate", help="face recognizer checkpoint (default: the bundled surrogate)")
    p.add_argument("--identities", choices=IDENTITY_MODES, default="folder",
                   help="who is who: the photo's folder (default), clusters of embeddings, or every face alone")
    p.add_argument("--batch-size", type=int, default=16, help="faces crafted together (default 16)")
    p.add_argument("--format", choices=("keep", "png"), default="keep", help="keep each photo's format, or PNG")
    p.add_argument("--no-face", choices=("copy", "skip"), default="copy",
                   help="photos without a face: copy unchanged (default) or leave out")
    gps = p.add_mutually_exclusive_group()
    gps.add_argument("--strip-gps", dest="keep_gps", action="store_false", help="drop GPS metadata (default)")
    gps.add_argument("--keep-gps", dest="keep_gps", action="store_true", help="keep GPS metadata")
    p.add_argument("--min-face-size", type=int, default=20, help="smallest face side in pixels (default 20)")
    default = ProtectSettings().objective
    p.add_argument("--objective", default=default,
                   help=f"crafting objective (default {default}; see docs/results/faces_objectives.md): "
                   f"{', '.join(n for n in OBJECTIVES.names() if n not in ('random', 'tensorclog'))}")
    p.add_argument("--chroma", type=float, default=ProtectSettings().chroma,
                   help="bound on the perturbation's colour part, a fraction 0..1 of what the ε-ball allows "
                   "(default %(default)s; lower: less colour cast on skin, less protection; 1: no bound; "
                   "docs/results/faces_protect_chroma.md)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true", help="redo photos already finished in OUT_DIR")
    p.add_argument("--report", action="store_true", help="also write OUT_DIR/contact_sheet.png (before/after)")
    add_common(p)
    p.set_defaults(keep_gps=False)
    return p


def run(args: argparse.Namespace) -> int:
    """Check settings, inputs, output and surrogate, then protect every photo; print a JSON summary."""
    if args.steps is not None and args.steps < 1:
        raise UsageError("--steps must be >= 1")
    if args.batch_size < 1:
        raise UsageError("--batch-size must be >= 1")
    settings = ProtectSettings.from_strength(
        args.strength, eps=parse_eps(args.eps) if args.eps is not None else None, steps=args.steps,
        identities=args.identities, batch_size=args.batch_size, force_png=args.format == "png", no_face=args.no_face,
        keep_gps=args.keep_gps, min_face_size=args.min_face_size, seed=args.seed, objective=args.objective,
        chroma=args.chroma)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} exists and is not a folder")
    check_writable(out)
    items = collect(args.inputs, out)
    rank, world, device = init_distributed(args.device)
    surrogate = Surrogate(Path(args.surrogate) if args.surrogate else DEFAULT_SURROGATE, device)
    protector = Protector(surrogate, settings, device=str(device))

    # Everything checked: from here on, outputs are written.
    manifest_path = out / MANIFEST
    clock = StageClock()
    results, todo, faces, seconds = protect_photos(items, out, protector, overwrite=args.overwrite, rank=rank,
                                                   world=world, progress=progress_bars(not args.quiet), clock=clock)
    if world > 1:
        dist.barrier()
        if rank == 0:
            merge_rank_manifests(out, world)
        dist.barrier()
    if args.report and rank == 0:
        from facepoison.report import contact_sheet

        contact_sheet(items, out, read_manifest(manifest_path), out / "contact_sheet.png")
    final = read_manifest(manifest_path) if rank == 0 else results
    mine = {it.rel for it in items}
    failed = sorted(p for p in mine if p in final and final[p]["status"].startswith("failed"))
    counts = {s: sum(1 for p in mine if final.get(p, {}).get("status") == s) for s in DONE}
    if rank == 0:
        print(json.dumps({"out": str(out), "photos": len(mine), **counts, "failed": len(failed),
                          "done_before": len(mine) - len(todo) if world == 1 else None,
                          "faces_this_run": faces, "seconds": round(seconds, 1),
                          "photos_per_s": round(len(results) / seconds, 3) if seconds > 0 and results else None,
                          "surrogate_sha256": surrogate.sha256, "stage_seconds": clock.as_dict()}))
        for p in failed:
            print(f"failed: {p}: {final[p]['status'][len('failed: '):]}", file=sys.stderr)
    return EXIT_FAILED if failed else EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    """``facepoison protect ARGV``: 0 on success, 1 when some photos failed, 2 on bad input (one line on stderr)."""
    return run_command("protect", build_parser(), run, argv)
