"""``facepoison experiment CONFIG.yaml``: the face experiment (seed paper Tables 6 and 7) in one command.

Every stage is cached under ``run_dir/<name>/`` and resumes after an interruption; the report goes to
``report_dir/faces_<config>.md`` (+ ``.json``, ROC curves, a figure of poisoned faces).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from facepoison.cli.common import EXIT_OK, add_common, progress_bars, run_command
from facepoison.config import load_config
from facepoison.errors import UsageError
from facepoison.experiment import ExperimentConfig, run_experiment


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``facepoison experiment`` (every flag it defines is used)."""
    p = argparse.ArgumentParser(prog="facepoison experiment", description=__doc__)
    p.add_argument("config", help="YAML config, e.g. configs/faces_cpu.yaml")
    p.add_argument("--run-dir", help="where stages cache their outputs (overrides run_dir)")
    p.add_argument("--report-dir", help="where the report goes (overrides report_dir)")
    p.add_argument("--lfw", help="LFW root, adds LFW verification (with --lfw-pairs)")
    p.add_argument("--lfw-pairs", help="LFW View-2 pairs.txt")
    p.add_argument("--bin", action="append", default=[], metavar="NAME=FILE.bin",
                   help="adds an insightface .bin benchmark (AgeDB-30, VGG2-FP, ...)")
    p.add_argument("--finished-only", action="store_true",
                   help="run no stage: report the sets whose stages are finished (while a long run goes on, or "
                        "after it stopped) and list the others as not finished")
    add_common(p)
    return p


def run(args: argparse.Namespace) -> int:
    """Load the config with the flags applied, run (or resume) the experiment, print the top-1 summary."""
    path = Path(args.config)
    overrides = {"run_dir": args.run_dir, "report_dir": args.report_dir, "lfw": args.lfw,
                 "lfw_pairs": args.lfw_pairs, "device": args.device}
    cfg = load_config(ExperimentConfig, path, overrides)
    if args.bin:
        bins = dict(cfg.bins)
        for spec in args.bin:
            name, sep, file = spec.partition("=")
            if not sep:
                raise UsageError(f"--bin wants NAME=FILE.bin, got {spec!r}")
            bins[name] = file
        cfg = dataclasses.replace(cfg, bins=bins)
    if not cfg.poisons and not cfg.protect.enabled:
        raise UsageError(f"{path} lists no poison runs (key poisons) and disables the protect path")

    def log(message: str) -> None:
        if not args.quiet:
            print(f"[experiment {cfg.name}] {message}", file=sys.stderr, flush=True)

    result = run_experiment(cfg, path, log=log, progress=progress_bars(not args.quiet),
                            finished_only=args.finished_only)
    summary = {m["label"]: (m.get("identification") or {}).get("top1") for m in result["models"]}
    print(json.dumps({"report_dir": cfg.report_dir, "top1": summary, "pending": result["pending"]}))
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    """``facepoison experiment ARGV``: 0 on success, 2 on bad input (one line on stderr)."""
    return run_command("experiment", build_parser(), run, argv)
