"""Crafting a whole data set into a poison store: the engine of ``facepoison craft`` and of the experiment.

:func:`craft_store` estimates the objective's target on a seeded subset of the clean set, crafts chunk by
chunk with :func:`facepoison.crafter.craft_dataset`, writes each chunk into a resumable part file, and
merges the parts into the store. It is idempotent: a run that was killed at any point (mid-chunk, after
the last chunk, after the merge) finishes the same store when called again.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from facepoison.config import CraftCommandConfig, to_dict
from facepoison.crafter import PoisonCrafter, craft_dataset, num_chunks
from facepoison.data import ImageSet
from facepoison.ensemble import SurrogateEnsemble, check_ensemble_objective
from facepoison.errors import UsageError
from facepoison.losses import quantize_delta
from facepoison.objectives import create_objective
from facepoison.provenance import code_revision, file_sha256
from facepoison.runtime import ProgressFactory, load_classifier, no_progress
from facepoison.store import FORMAT, StoreWriter, done_chunks, merge_parts, part_paths, read_attrs
from recognition.faceset import FaceSet
from recognition.train import rank as process_rank
from recognition.train import world_size


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
    if not settings["ensemble"]:
        del settings["ensemble"]  # stores made before ensembles existed keep their fingerprint
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
    digest.update(surrogate_sha.encode())
    digest.update(data.ids.numpy().tobytes())
    digest.update(str((len(data), *data.sample_shape)).encode())
    return digest.hexdigest()


def check_surrogate_fits(cfg: CraftCommandConfig, meta: dict[str, Any], data: ImageSet | FaceSet) -> None:
    """One-line UsageError when the surrogate was not trained on data of this kind and shape."""
    if meta["num_classes"] != len(data.classes):
        raise UsageError(f"surrogate {cfg.surrogate} has {meta['num_classes']} classes, the data has "
                         f"{len(data.classes)}: it was not trained on this data")
    if "image_shape" in meta and list(meta["image_shape"]) != list(data.sample_shape):
        raise UsageError(f"surrogate was trained on {meta['image_shape']} images, the data is "
                         f"{list(data.sample_shape)}")
    if isinstance(data, FaceSet) != (meta.get("kind") == "face"):
        raise UsageError(f"surrogate {cfg.surrogate} is a {meta.get('kind', 'classifier')} model; the data "
                         f"{'is' if isinstance(data, FaceSet) else 'is not'} a face set")


def craft_store(
    cfg: CraftCommandConfig, data: ImageSet | FaceSet, model: nn.Module, meta: dict[str, Any], out: Path,
    device: torch.device, progress: ProgressFactory = no_progress,
) -> dict[str, Any] | None:
    """Craft poisons for ``data`` against ``model`` into the store ``out``, resuming finished chunks.

    Face sets are crafted against a CosFace recognizer through its margin logits (``model.logits``).
    Under torchrun every rank takes every W-th unfinished chunk and writes its own part file; rank 0
    merges them. Returns a small report on rank 0 (None elsewhere).
    """
    out = Path(out)
    rank, world = process_rank(), world_size()
    check_surrogate_fits(cfg, meta, data)
    surrogate_sha = file_sha256(cfg.surrogate)
    if cfg.ensemble:
        model, surrogate_sha = _ensemble(cfg, data, model, surrogate_sha)
    fp = fingerprint(cfg, surrogate_sha, data)
    n, n_chunks = len(data), num_chunks(len(data), cfg.batch_size)
    if out.is_file():  # finished earlier (e.g. killed after the merge, before the caller noted it)
        if read_attrs(out).get("fingerprint") != fp:
            raise UsageError(f"{out} holds poisons made with other settings; pass --overwrite to replace it")
        return {"store": str(out), "images": n, "resumed_chunks": n_chunks, "crafted_images_rank0": 0,
                "target_seconds": 0.0, "craft_seconds": 0.0, "image_steps_per_s": None}
    finished = done_chunks(out, fp)
    todo = [k for k in range(n_chunks) if k not in finished][rank::world]
    target_seconds = craft_seconds = 0.0
    crafted = 0
    objective = create_objective(cfg.objective, independent=cfg.craft.independent)
    attrs = {"format": FORMAT, "eps": cfg.craft.eps, "objective": cfg.objective, "steps": cfg.craft.steps,
             "restarts": cfg.craft.restarts, "seed": cfg.craft.seed, "independent": cfg.craft.independent,
             "surrogate_sha256": surrogate_sha, "config": to_dict(cfg), "code_revision": code_revision(),
             "fingerprint": fp, "classes": data.classes}
    bound = int(round(cfg.craft.eps))
    if todo and objective.dataset_level and not objective.optimizes:  # one drawn pattern per identity
        if rank == 0:
            crafted, craft_seconds = _draw_identity_patterns(cfg, objective, data, out, attrs, bound)
        todo = []
    if todo and objective.dataset_level:  # the min-min loop needs the whole set at once: rank 0 crafts it all
        if rank == 0:
            crafted, craft_seconds, attrs["min_min"] = _craft_min_min(cfg, objective, data, model, device, out,
                                                                     attrs, bound, progress)
        todo = []
    if todo:  # nothing left to craft (killed after the last chunk): no target, no objective, only the merge
        model.to(device)
        t0 = time.perf_counter()
        if objective.needs_target:
            pos = target_positions(n, cfg)
            batches = (data.get_batch(pos[i : i + cfg.batch_size]) for i in range(0, len(pos), cfg.batch_size))
            objective.prepare(model, ((x.float() / 255, y) for x, y in batches), device=device)
        target_seconds = time.perf_counter() - t0
        crafter = PoisonCrafter(model, objective, cfg.craft, device=device)
        writer = StoreWriter(out, data.ids.numpy(), tuple(data.sample_shape), cfg.batch_size, bound, attrs, rank)
        bar = progress(n, "craft", "img") if rank == 0 else no_progress(n, "", "")
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
    minmin_checkpoint(out).unlink(missing_ok=True)
    steps = max(1, cfg.craft.steps * cfg.craft.restarts) if not objective.dataset_level else 1
    return {"store": str(out), "images": n, "resumed_chunks": len(finished), "crafted_images_rank0": crafted,
            "target_seconds": round(target_seconds, 2), "craft_seconds": round(craft_seconds, 2),
            "image_steps_per_s": round(crafted * steps / craft_seconds, 2) if craft_seconds else None}


def _ensemble(cfg: CraftCommandConfig, data: ImageSet | FaceSet, model: nn.Module, surrogate_sha: str
              ) -> tuple[SurrogateEnsemble, str]:
    """``model`` and the surrogates of ``cfg.ensemble`` as one :class:`SurrogateEnsemble`, and the digest of all
    their files (what the store's fingerprint depends on)."""
    check_ensemble_objective(cfg.objective, UsageError)
    members, digests = [model], [surrogate_sha]
    for path in cfg.ensemble:
        member, meta = load_classifier(path)
        check_surrogate_fits(dataclasses.replace(cfg, surrogate=path), meta, data)
        members.append(member)
        digests.append(file_sha256(path))
    return SurrogateEnsemble(members), hashlib.sha256(":".join(digests).encode()).hexdigest()


def minmin_checkpoint(out: Path) -> Path:
    """Where the min-min loop crafting the store ``out`` keeps its state between rounds (removed with the merge)."""
    return Path(out).with_name(Path(out).name + ".minmin.pt")


def discard_partial(out: Path) -> None:
    """Remove a store, every part file and the min-min checkpoint of an earlier run (``--overwrite``)."""
    for p in [Path(out), *part_paths(Path(out), include_tmp=True), minmin_checkpoint(out)]:
        p.unlink(missing_ok=True)


def _draw_identity_patterns(cfg: CraftCommandConfig, objective, data: ImageSet | FaceSet, out: Path,
                            attrs: dict[str, Any], bound: int) -> tuple[int, float]:
    """Each face's identity pattern (:func:`facepoison.shortcuts.patterns`), chroma-limited and quantized, into the
    store."""
    from facepoison.losses import limit_chroma
    from facepoison.shortcuts import patterns

    t0 = time.perf_counter()
    eps = cfg.craft.eps / 255
    writer = StoreWriter(out, data.ids.numpy(), tuple(data.sample_shape), cfg.batch_size, bound, attrs, 0)
    try:
        for k in range(num_chunks(len(data), cfg.batch_size)):
            positions = range(k * cfg.batch_size, min(len(data), (k + 1) * cfg.batch_size))
            images_u8, labels = data.get_batch(positions)
            delta = limit_chroma(patterns(labels.tolist(), data.sample_shape, eps, cfg.craft.seed), cfg.craft.chroma)
            writer.write(k, positions, quantize_delta(delta, images_u8, eps), 0.0)
    finally:
        writer.close()
    return len(data), time.perf_counter() - t0


def _craft_min_min(cfg: CraftCommandConfig, objective, data: ImageSet | FaceSet, model: nn.Module,
                   device: torch.device, out: Path, attrs: dict[str, Any], bound: int,
                   progress: ProgressFactory) -> tuple[int, float, str]:
    """Error-minimizing noise over the whole set (the min-min loop), written into the store chunk by chunk.

    The loop checkpoints every round beside the store (:func:`minmin_checkpoint`): a run killed while it runs
    goes on from its last finished round.
    """
    from facepoison.unlearnable import CheckpointMismatch, MinMinConfig, craft_error_minimizing

    mm = cfg.min_min
    # the loop's own options as configured, the rest from the crafting settings and the objective
    config = MinMinConfig(**dataclasses.asdict(mm), eps=cfg.craft.eps, batch_size=cfg.batch_size,
                          classwise=objective.classwise, augment=cfg.craft.augment, max_shift=cfg.craft.max_shift,
                          seed=cfg.craft.seed, chroma=cfg.craft.chroma,
                          precision=cfg.craft.precision)
    bar = progress(mm.max_rounds, "min-min", "round")
    t0 = time.perf_counter()
    try:
        result = craft_error_minimizing(
            model, data.get_batch, data.labels, len(data.classes),
            config, device=device, progress=lambda r: bar.update(1, acc=f"{r.train_accuracy:.3f}"),
            checkpoint=minmin_checkpoint(out), checkpoint_key=attrs["fingerprint"])
    except CheckpointMismatch as exc:
        raise UsageError(f"{exc}, or pass --overwrite") from exc
    bar.close()
    seconds = time.perf_counter() - t0
    summary = json.dumps({"rounds": result.rounds, "train_accuracy": result.train_accuracy,
                          "history": [vars(h) for h in result.history]})
    writer = StoreWriter(out, data.ids.numpy(), tuple(data.sample_shape), cfg.batch_size, bound,
                         {**attrs, "min_min": summary}, 0)
    try:
        for k in range(num_chunks(len(data), cfg.batch_size)):
            positions = range(k * cfg.batch_size, min(len(data), (k + 1) * cfg.batch_size))
            images_u8, _ = data.get_batch(positions)
            q = quantize_delta(result.delta[positions.start : positions.stop], images_u8, config.eps_unit)
            writer.write(k, positions, q, result.history[-1].noise_loss)
    finally:
        writer.close()
    return len(data), seconds, summary
