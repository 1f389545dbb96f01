"""``facepoison craft DATA --surrogate CKPT --out STORE.h5``: craft poisons into a resumable HDF5 store."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

import torch.distributed as dist

from facepoison.cli.common import EXIT_OK, add_common, progress_bars, run_command
from facepoison.config import CraftCommandConfig, load_config, parse_eps
from facepoison.crafting import craft_store, discard_partial
from facepoison.errors import UsageError
from facepoison.objectives import OBJECTIVES
from facepoison.runtime import check_output_file, init_distributed, load_classifier
from facepoison.training import load_data


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``facepoison craft`` (every flag it defines is used)."""
    p = argparse.ArgumentParser(prog="facepoison craft", description=__doc__)
    p.add_argument("data", help="ImageFolder root (train/, test/), cifar-10-batches-py folder, or FACES.h5 (a face "
                   "set from facepoison prepare, crafted against a CosFace surrogate)")
    p.add_argument("--identities", help="face sets: craft on the identities named in this file, one per line")
    p.add_argument("--surrogate", help="checkpoint of the surrogate (from facepoison train)")
    p.add_argument("--ensemble", action="append", metavar="CKPT",
                   help="another surrogate checkpoint to craft against together with --surrogate, repeatable "
                   "(error_min and error_min_identity only)")
    p.add_argument("--out", required=True, help="poison store to write (STORE.h5)")
    p.add_argument("--config", help="YAML config (sections data, craft; keys objective, surrogate, ...)")
    p.add_argument("--eps", help="L-inf bound in /255 units: 8 or 8/255 (default 8)")
    p.add_argument("--objective", help=f"one of {', '.join(OBJECTIVES.names())} (default alignment)")
    p.add_argument("--steps", type=int, help="signed-Adam steps per restart (default 50)")
    p.add_argument("--restarts", type=int, help="restarts; the lowest-loss one is kept (default 1)")
    p.add_argument("--independent", action="store_const", const=True,
                   help="online mode: detach the crafting-gradient norm so each image/shard is crafted alone")
    p.add_argument("--step-size", type=float, help="Adam step as a fraction of eps (default 0.5)")
    p.add_argument("--augment", help="crafting augmentation: shift_flip (default), flip, none")
    p.add_argument("--chroma", type=float,
                   help="bound on the colour part, a fraction 0..1 of what the ε-ball allows (default 1: none)")
    p.add_argument("--precision", choices=["float32", "bfloat16"],
                   help="float32 (default) or bfloat16 autocast of the surrogate's double backward (GPU speed)")
    p.add_argument("--reg", action="append", metavar="NAME=WEIGHT",
                   help="regularizer with weight, repeatable: l2, ssim, tv (e.g. --reg ssim=0.1)")
    p.add_argument("--target-fraction", type=float, help="fraction of the set that estimates the target (0.1)")
    p.add_argument("--target-samples", type=int, help="number of images that estimate the target (overrides)")
    p.add_argument("--batch-size", type=int, help="images per crafting batch and store chunk (default 128)")
    p.add_argument("--seed", type=int, help="seed of restarts, augmentation and the target subset")
    p.add_argument("--subset", type=int, help="craft on this many images (class-balanced, fixed by --subset-seed)")
    p.add_argument("--subset-seed", type=int)
    p.add_argument("--image-size", type=int, help="resize and centre-crop images to this size")
    p.add_argument("--overwrite", action="store_true", help="replace an existing store and discard partial runs")
    add_common(p)
    return p


def parse_regs(items: list[str] | None) -> dict[str, float] | None:
    """``--reg NAME=WEIGHT`` items → ``{name: weight}`` (a bare ``NAME`` weighs 1); None when none are given.

    Example:
        >>> parse_regs(["ssim=0.1", "tv"])
        {'ssim': 0.1, 'tv': 1.0}
    """
    if not items:
        return None
    regs = {}
    for item in items:
        name, sep, weight = item.partition("=")
        try:
            regs[name.strip()] = float(weight) if sep else 1.0
        except ValueError as exc:
            raise UsageError(f"--reg expects NAME=WEIGHT, got {item!r}") from exc
    return regs


def resolve_config(args: argparse.Namespace) -> CraftCommandConfig:
    """The command's config: ``--config`` YAML (if any) with every given flag overriding it."""
    return load_config(CraftCommandConfig, args.config, {
        "data.root": args.data, "data.identities": args.identities, "data.subset": args.subset,
        "data.subset_seed": args.subset_seed,
        "data.image_size": args.image_size, "surrogate": args.surrogate, "objective": args.objective,
        "ensemble": tuple(args.ensemble) if args.ensemble else None,
        "craft.eps": parse_eps(args.eps) if args.eps is not None else None, "craft.steps": args.steps,
        "craft.restarts": args.restarts, "craft.independent": args.independent, "craft.step_size": args.step_size,
        "craft.augment": args.augment, "craft.chroma": args.chroma, "craft.precision": args.precision,
        "craft.regularizers": parse_regs(args.reg),
        "craft.seed": args.seed,
        "target_fraction": args.target_fraction, "target_samples": args.target_samples,
        "batch_size": args.batch_size, "device": args.device,
    })


def run(args: argparse.Namespace) -> int:
    """Check data, output and surrogate (in that order), then craft the store and print its summary as JSON."""
    cfg = resolve_config(args)
    if not cfg.surrogate:
        raise UsageError("--surrogate is required (a checkpoint from facepoison train)")
    OBJECTIVES.get(cfg.objective)
    out = Path(args.out)
    # Validate in the order a user reads the command: data, output, then the surrogate (slowest to load).
    data = load_data(cfg.data)
    check_output_file(out, [cfg.data.root], args.overwrite)
    model, meta = load_classifier(cfg.surrogate)
    rank, world, device = init_distributed(cfg.device)
    if args.overwrite and rank == 0:
        discard_partial(out)
    if world > 1:
        dist.barrier()
    report = craft_store(cfg, data, model, meta, out, device, progress=progress_bars(not args.quiet))
    if report is not None:
        print(json.dumps(report))
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    """``facepoison craft ARGV``: 0 on success, 2 on bad input (one line on stderr)."""
    return run_command("craft", build_parser(), run, argv)
