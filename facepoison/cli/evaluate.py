"""``facepoison evaluate``: how well a recognizer identifies and verifies faces (or a classifier classifies).

Face recognizers (one or several ``--model [LABEL=]CKPT``; the first is the reference, e.g. the clean model)::

    facepoison evaluate --model clean=runs/clean.pt --model eps8=runs/eps8.pt \\
        --cfp ../shared/data/faces/cfp --cfp-faces runs/faces/cfp.h5 --cfp-folds 8-10 \\
        --lfw LFW_DIR --lfw-pairs pairs.txt --bin AgeDB-30=agedb_30.bin \\
        --ident runs/faces/celeba_wild.h5 --ident-split heldout.txt --out reports/faces

writes ``report.json``, ``report.md`` (the seed paper's Table 6 layout, the drop from the first model in
brackets) and ``roc.png`` into the output folder, each under a temporary name first. Aligned benchmark
faces and every model's embeddings are cached in ``OUT/cache`` (by content), so re-running is fast.

Classifiers: ``facepoison evaluate --model CKPT --data DATA [--split test]`` prints the test accuracy.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

from eval.benchmarks import BENCHMARK_NAMES
from facepoison.cli.common import EXIT_OK, add_common, progress_bars, run_command
from facepoison.errors import UsageError
from facepoison.evaluation import FaceEvaluation, evaluate_classifier, evaluate_faces
from facepoison.runtime import check_output_file
from recognition.atomic import atomic_write


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``facepoison evaluate`` (every flag it defines is used)."""
    p = argparse.ArgumentParser(prog="facepoison evaluate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", action="append", required=True, metavar="[LABEL=]CKPT",
                   help="checkpoint from facepoison train; repeat to compare models (the first is the reference)")
    p.add_argument("--out", help="report folder (face recognizers); a JSON file (classifiers, optional)")
    g = p.add_argument_group("face verification and identification")
    g.add_argument("--lfw", help="LFW root: <root>/<Name>/<Name>_NNNN.jpg (needs --lfw-pairs)")
    g.add_argument("--lfw-pairs", help="the official View-2 pairs.txt")
    g.add_argument("--cfp", help="CFP root (Data/, Protocol/): the CFP-FF and CFP-FP protocols")
    g.add_argument("--cfp-faces", help="prepared CFP face set (facepoison prepare --layout cfp) to skip detection")
    g.add_argument("--cfp-protocols", default="FF,FP", help="which CFP protocols (default FF,FP)")
    g.add_argument("--cfp-folds", help="only these CFP folds, e.g. 8-10 (those no training identity is in)")
    g.add_argument("--bin", action="append", default=[], metavar="NAME=FILE.bin",
                   help=f"insightface .bin of aligned pairs; NAME is one of {', '.join(BENCHMARK_NAMES)}")
    g.add_argument("--ident", help="prepared face set (FACES.h5) for kNN identification")
    g.add_argument("--ident-split", help="identities of --ident to use (held-out ones), one per line")
    g.add_argument("--gallery-per-identity", type=int,
                   help="gallery faces per identity (default: half of each identity's faces)")
    g.add_argument("--cache", help="cache folder (default OUT/cache)")
    g.add_argument("--title", default="Face recognition evaluation", help="heading of report.md")
    c = p.add_argument_group("classifiers")
    c.add_argument("--data", help="ImageFolder root or cifar-10-batches-py folder")
    c.add_argument("--split", default="test", help="split to evaluate on (default test)")
    p.add_argument("--batch-size", type=int, default=128)
    add_common(p)
    return p


def parse_models(specs: list[str]) -> tuple[tuple[str, str], ...]:
    """``[LABEL=]CKPT`` specs → (label, path) pairs; the label defaults to the file's stem.

    Example:
        >>> parse_models(["clean=runs/a.pt", "runs/eps8.pt"])
        (('clean', 'runs/a.pt'), ('eps8', 'runs/eps8.pt'))
    """
    out = []
    for spec in specs:
        label, _, path = spec.rpartition("=") if "=" in spec else ("", "", spec)
        out.append((label or Path(path).stem, path))
    return tuple(out)


def parse_bins(specs: list[str]) -> tuple[tuple[str, str], ...]:
    """``NAME=FILE.bin`` specs → (name, path) pairs; a one-line UsageError for a spec without ``=``.

    Example:
        >>> parse_bins(["AgeDB-30=agedb_30.bin"])
        (('AgeDB-30', 'agedb_30.bin'),)
    """
    out = []
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep:
            raise UsageError(f"--bin wants NAME=FILE.bin, got {spec!r}")
        out.append((name, path))
    return tuple(out)


def run_classification(args: argparse.Namespace) -> int:
    """Test accuracy of one classifier on ``--data`` [``--split``], printed (and written to ``--out``) as JSON."""
    if len(args.model) != 1:
        raise UsageError("--data evaluates one classifier; give --model once")
    if args.out:
        check_output_file(args.out, [], overwrite=True)  # before the evaluation, not when its report is ready
    report = evaluate_classifier(args.model[0].split("=", 1)[-1], args.data, args.split, args.batch_size, args.device)
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(out, json.dumps(report, indent=2))
    print(json.dumps(report))
    return EXIT_OK


def run_faces(args: argparse.Namespace) -> int:
    """The face recognition report of every ``--model`` into ``--out``; a JSON summary of it on stdout."""
    if not args.out:
        raise UsageError("--out REPORT_DIR is required for face recognizers")
    cfg = FaceEvaluation(
        models=parse_models(args.model), out=args.out, lfw=args.lfw, lfw_pairs=args.lfw_pairs, cfp=args.cfp,
        cfp_faces=args.cfp_faces, cfp_protocols=args.cfp_protocols, cfp_folds=args.cfp_folds,
        bins=parse_bins(args.bin), ident=args.ident, ident_split=args.ident_split,
        gallery_per_identity=args.gallery_per_identity, cache=args.cache, title=args.title,
        batch_size=args.batch_size, device=args.device, command="facepoison evaluate " + shlex.join(args.argv))
    report = evaluate_faces(cfg, progress=progress_bars(not args.quiet))
    summary = {r["label"]: {**({"top1": r["identification"]["top1"]} if r["identification"] else {}),
                            **{b: round(v["accuracy"], 4) for b, v in r["verification"].items()}}
               for r in report["models"]}
    print(json.dumps({"report": str(Path(args.out) / "report.json"), **summary}))
    return EXIT_OK


def run(args: argparse.Namespace) -> int:
    """Classifier accuracy when ``--data`` is given, else the face recognition report."""
    return run_classification(args) if args.data else run_faces(args)


def main(argv: Sequence[str] | None = None) -> int:
    """``facepoison evaluate ARGV``: 0 on success, 2 on bad input (one line on stderr)."""
    argv = list(sys.argv[2:] if argv is None else argv)
    parser = build_parser()
    parser.set_defaults(argv=argv)  # recorded in the report
    return run_command("evaluate", parser, run, argv)
