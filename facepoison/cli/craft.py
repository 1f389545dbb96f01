"""``facepoison craft DATA --surrogate CKPT --out STORE.h5``: craft poisons into a resumable HDF5 store."""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.distributed as dist

from facepoison.cli.common import EXIT_OK, Progress, add_common, init_distributed, load_classifier, run_command
from facepoison.cli.train import is_face_set, load_face_data
from facepoison.config import CraftCommandConfig, load_config, parse_eps, to_dict
from facepoison.crafter import PoisonCrafter, craft_dataset, num_chunks
from facepoison.data import ImageSet, load_dataset
from facepoison.errors import UsageError
from facepoison.losses import target_gradient
from facepoison.objectives import OBJECTIVES, create_objective
from facepoison.provenance import code_revision, file_sha256
from facepoison.store import FORMAT, StoreWriter, done_chunks, merge_parts, part_paths
from recognition.faceset import FaceSet
from recognition.train import rank as process_rank
from recognition.train import world_size


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="facepoison craft", description=__doc__)
    p.add_argument("data", help="ImageFolder root (train/, test/), cifar-10-batches-py folder, or FACES.h5 (a face "
                   "set from facepoison prepare, crafted against a CosFace surrogate)")
    p.add_argument("--identities", help="face sets: craft on the identities named in this file, one per line")
    p.add_argument("--surrogate", help="checkpoint of the surrogate (from facepoison train)")
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
    return load_config(CraftCommandConfig, args.config, {
        "data.root": args.data, "data.identities": args.identities, "data.subset": args.subset,
        "data.subset_seed": args.subset_seed,
        "data.image_size": args.image_size, "surrogate": args.surrogate, "objective": args.objective,
        "craft.eps": parse_eps(args.eps) if args.eps is not None else None, "craft.steps": args.steps,
        "craft.restarts": args.restarts, "craft.independent": args.independent, "craft.step_size": args.step_size,
        "craft.augment": args.augment, "craft.regularizers": parse_regs(args.reg), "craft.seed": args.seed,
        "target_fraction": args.target_fraction, "target_samples": args.target_samples,
        "batch_size": args.batch_size, "device": args.device,
    })


def target_positions(n: int, cfg: CraftCommandConfig) -> torch.Tensor:
    """A random subset of positions (fixed by the seed) that estimates the target gradient."""
    k = cfg.target_samples if cfg.target_samples is not None else max(1, round(cfg.target_fraction * n))
    if not (0 < k <= n):
        raise UsageError(f"target estimate needs between 1 and {n} images, got {k}")
    g = torch.Generator().manual_seed(cfg.craft.seed + 17)
    return torch.randperm(n, generator=g)[:k].sort().values


def fingerprint(cfg: CraftCommandConfig, surrogate_sha: str, data: ImageSet | FaceSet) -> str:
    """What a partial store must share with this run to be resumed: settings, surrogate and data."""
    settings = to_dict(cfg)
    settings.pop("device")
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
    digest.update(surrogate_sha.encode())
    digest.update(data.ids.numpy().tobytes())
    digest.update(str((len(data), *data.sample_shape)).encode())
    return digest.hexdigest()


def run(args: argparse.Namespace) -> int:
    cfg = resolve_config(args)
    if not cfg.surrogate:
        raise UsageError("--surrogate is required (a checkpoint from facepoison train)")
    OBJECTIVES.get(cfg.objective)
    out = Path(args.out)
    if out.exists() and not args.overwrite:
        raise UsageError(f"{out} already exists; pass --overwrite to replace it")
    rank, world, device = init_distributed(cfg.device)
    model, meta = load_classifier(cfg.surrogate)
    if is_face_set(cfg.data.root):
        data = load_face_data(cfg)
    else:
        data = load_dataset(cfg.data.root, cfg.data.split, cfg.data.image_size, cfg.data.subset,
                            cfg.data.subset_seed)
    if args.overwrite and rank == 0:
        for p in [out, *part_paths(out, include_tmp=True)]:
            p.unlink(missing_ok=True)
    if world > 1:
        dist.barrier()
    report = craft_store(cfg, data, model, meta, out, device, quiet=args.quiet)
    if report is not None:
        print(json.dumps(report))
    return EXIT_OK


def craft_store(
    cfg: CraftCommandConfig, data: ImageSet | FaceSet, model: torch.nn.Module, meta: dict, out: Path,
    device: torch.device, quiet: bool = False,
) -> dict | None:
    """Craft poisons for ``data`` against ``model`` into the store ``out``, resuming finished chunks.

    Face sets are crafted against a CosFace recognizer through its margin logits (``model.logits``).

    Under torchrun every rank takes every W-th unfinished chunk and writes its own part file; rank 0
    merges them. Returns a small report on rank 0 (None elsewhere).
    """
    rank, world = process_rank(), world_size()
    if meta["num_classes"] != len(data.classes):
        raise UsageError(f"surrogate {cfg.surrogate} has {meta['num_classes']} classes, the data has "
                         f"{len(data.classes)}: it was not trained on this data")
    if "image_shape" in meta and list(meta["image_shape"]) != list(data.sample_shape):
        raise UsageError(f"surrogate was trained on {meta['image_shape']} images, the data is "
                         f"{list(data.sample_shape)}")
    logits_fn = model.logits if meta.get("kind") == "face" else None
    model.to(device)
    surrogate_sha = file_sha256(cfg.surrogate)
    fp = fingerprint(cfg, surrogate_sha, data)
    n, n_chunks = len(data), num_chunks(len(data), cfg.batch_size)
    finished = done_chunks(out, fp)
    todo = [k for k in range(n_chunks) if k not in finished][rank::world]

    objective_target = None
    t0 = time.perf_counter()
    if OBJECTIVES.get(cfg.objective).needs_target and todo:
        pos = target_positions(n, cfg)
        batches = (data.get_batch(pos[i : i + cfg.batch_size]) for i in range(0, len(pos), cfg.batch_size))
        objective_target = target_gradient(model, ((x.float() / 255, y) for x, y in batches), logits_fn=logits_fn,
                                           device=device)
    target_seconds = time.perf_counter() - t0
    objective = create_objective(cfg.objective, target=objective_target, independent=cfg.craft.independent)
    crafter = PoisonCrafter(model, objective, cfg.craft, logits_fn=logits_fn, device=device)

    attrs = {"format": FORMAT, "eps": cfg.craft.eps, "objective": cfg.objective, "steps": cfg.craft.steps,
             "restarts": cfg.craft.restarts, "seed": cfg.craft.seed, "independent": cfg.craft.independent,
             "surrogate_sha256": surrogate_sha, "config": to_dict(cfg), "code_revision": code_revision(),
             "fingerprint": fp, "classes": data.classes}
    bound = int(round(cfg.craft.eps))
    craft_seconds, crafted = 0.0, 0
    if todo:
        writer = StoreWriter(out, data.ids.numpy(), tuple(data.sample_shape), cfg.batch_size, bound, attrs, rank)
        bar = Progress(n, "craft", "img", enabled=not quiet and rank == 0)
        bar.update(min(n, len(finished) * cfg.batch_size))
        try:
            for chunk in craft_dataset(crafter, data.get_batch, n, cfg.batch_size, todo):
                writer.write(chunk.index, chunk.positions, chunk.delta, chunk.loss)
                craft_seconds += chunk.seconds
                crafted += len(chunk.positions)
                bar.update(len(chunk.positions) * world, loss=f"{chunk.loss:.3f}")
        finally:
            writer.close()
            bar.close()
    if world > 1:
        dist.barrier()
    if rank != 0:
        return None
    merge_parts(out, n_chunks)
    steps = max(1, cfg.craft.steps * cfg.craft.restarts)
    return {"store": str(out), "images": n, "resumed_chunks": len(finished), "crafted_images_rank0": crafted,
            "target_seconds": round(target_seconds, 2), "craft_seconds": round(craft_seconds, 2),
            "image_steps_per_s": round(crafted * steps / craft_seconds, 2) if craft_seconds else None}


def main(argv: Sequence[str] | None = None) -> int:
    return run_command("craft", build_parser(), run, argv)
