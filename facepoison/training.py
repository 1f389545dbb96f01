"""Training surrogates and victims into checkpoints: the engine of ``facepoison train`` and of the experiment.

:func:`train_checkpoint` trains a classifier or a CosFace face recognizer on a data set (with a poison store
applied on top when asked), resumes from a per-epoch state file, can evaluate the model every few epochs
and keep its best weights, and writes a self-describing checkpoint.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from eval.metrics import top1_accuracy
from facepoison.config import DataConfig, TrainCommandConfig, to_dict
from facepoison.data import ImageSet, load_dataset
from facepoison.defenses.use import defended_dataset, defended_model, materialize, training_hooks
from facepoison.errors import UsageError
from facepoison.provenance import code_revision, file_sha256
from facepoison.runtime import ProgressFactory, no_progress
from facepoison.store import PoisonedDataset, load_store
from recognition.checkpoint import atomic_torch_save, save_checkpoint
from recognition.faceset import FaceSet
from recognition.heads import create_recognizer
from recognition.models import create_model, default_normalization
from recognition.train import cross_entropy_loss, predict, rank, train_classifier, world_size

IN_MEMORY_BYTES = 4 * 2**30
"""Training sets up to this many bytes of uint8 pixels are decoded once into memory before training."""

EpochEval = Callable[[nn.Module, int], dict[str, float]]
"""``(model, epoch) -> metrics`` with a ``"score"`` entry (higher is better), e.g. held-out top-1."""


def is_face_set(root: str | Path) -> bool:
    """A prepared face set is one HDF5 file; every other data root is a folder."""
    return Path(root).is_file()


def read_identities(path: str | Path) -> list[str]:
    """Identity names, one per line (``#`` comments and blank lines skipped); one-line UsageError if none."""
    p = Path(path)
    if not p.is_file():
        raise UsageError(f"identities file {p} does not exist")
    names = [line.strip() for line in p.read_text().splitlines() if line.strip() and not line.startswith("#")]
    if not names:
        raise UsageError(f"identities file {p} names no identity")
    return names


def load_face_data(data: DataConfig) -> FaceSet:
    """The face set of ``data.root``, restricted to the identities of ``data.identities`` when given."""
    try:
        faces = FaceSet(data.root)
    except (OSError, KeyError, ValueError) as exc:
        raise UsageError(f"{data.root} is not a face set from facepoison prepare") from exc
    if data.identities:
        faces = faces.restrict(read_identities(data.identities))
    if len(faces) == 0:
        raise UsageError(f"no faces in {data.root}" + (f" for the identities of {data.identities}"
                                                       if data.identities else ""))
    return faces


def load_data(data: DataConfig) -> ImageSet | FaceSet:
    """A face set (FACES.h5) or an image set (ImageFolder tree, cifar-10-batches-py), checked before any work."""
    root = Path(data.root)
    if not root.exists():
        raise UsageError(f"data {root} does not exist")
    if is_face_set(root):
        return load_face_data(data)
    return load_dataset(data.root, data.split, data.image_size, data.subset, data.subset_seed)


def face_loss(net: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """CosFace loss: cross-entropy of the margin logits (the recognizer applies the margin given labels)."""
    return F.cross_entropy(net(images, labels), labels)


def build_model(cfg: TrainCommandConfig, num_classes: int, faces: bool) -> nn.Module:
    """An untrained model of ``cfg.model`` (a CosFace recognizer for face sets)."""
    mc = cfg.model
    if faces:
        return create_recognizer(mc.name, num_classes, mc.width, mc.embedding_size, mc.dropout, mc.cosface_s,
                                 mc.cosface_m, mc.stem_stride)
    return create_model(mc.name, num_classes, width=mc.width)


@torch.no_grad()
def train_accuracy(model: nn.Module, dataset, faces: bool, device: torch.device, limit: int = 2048) -> float:
    """Top-1 of the model on (up to ``limit`` evenly spaced samples of) its own training set, in eval mode.

    For face recognizers the prediction is the nearest class weight (the largest cosine, no margin)."""
    step = max(1, len(dataset) // limit)
    picks = torch.utils.data.Subset(dataset, list(range(0, len(dataset), step)))
    logits, labels = predict(model, picks, device=device)
    return top1_accuracy(logits.numpy(), labels.numpy()) if len(labels) else float("nan")


def train_checkpoint(
    cfg: TrainCommandConfig, data: ImageSet | FaceSet, test: ImageSet | None, out: Path, device: torch.device,
    fresh: bool = False, progress: ProgressFactory = no_progress, epoch_eval: EpochEval | None = None,
    eval_every: int = 0,
) -> dict[str, Any] | None:
    """Train on ``data`` (with ``cfg.poisons`` applied, then ``cfg.defense``), evaluate on ``test``, save ``out``
    (+ ``.json``).

    Resumes from ``out.resume.pt`` (saved after every epoch) unless ``fresh``. With ``epoch_eval`` and
    ``eval_every`` > 0, the model is evaluated after every ``eval_every``-th epoch and after the last; the
    results go into the meta (``epoch_evals``) and the weights of the best-scoring epoch into
    ``out.best.pt`` (what a scraper who keeps the best model on a validation set would keep).

    Args:
        cfg: model, schedule, (optionally) the poison store to apply and a defense: a data defense changes the
            (poisoned) images once before training, a training defense hooks into every step, ``victim_arch``
            replaces the architecture.
        data: the training set (a face set trains a CosFace recognizer, an image set a classifier).
        test: evaluated once after training (``test_accuracy`` in the meta), or None.
        out: the checkpoint to write; ``out.json`` gets its meta.
        device: where to train.
        fresh: ignore (and delete) a resume state from an earlier run.
        progress: progress bars (one per run, in steps).
        epoch_eval: ``(model, epoch) -> metrics`` with a ``score``, or None.
        eval_every: evaluate every this many epochs (0: never).

    Raises:
        UsageError: a resume state made with other settings (pass ``fresh``).

    Returns:
        The checkpoint's meta on rank 0 (with ``train_accuracy`` and ``final_loss``), None on other ranks.
    """
    out = Path(out)
    resume_path = out.with_name(out.name + ".resume.pt")
    best_path = out.with_name(out.stem + ".best.pt")
    if fresh and resume_path.exists():
        resume_path.unlink()
    faces = isinstance(data, FaceSet)
    classes = data.identities if faces else data.classes
    num_classes = len(classes)
    defense = cfg.defense.build() if cfg.defense else None
    built = dataclasses.replace(cfg, model=defended_model(cfg.model, defense))  # victim_arch: another architecture
    torch.manual_seed(cfg.train.seed)
    model = build_model(built, num_classes, faces)
    dataset = data
    poison_info = None
    if cfg.poisons:
        poisons = load_store(cfg.poisons)
        dataset = PoisonedDataset(data, poisons)
        poison_info = {"path": str(cfg.poisons), "sha256": file_sha256(cfg.poisons), "eps": poisons.attrs.get("eps"),
                       "objective": poisons.attrs.get("objective"), "poisoned": dataset.num_poisoned}
    # checked before the (possibly long) decoding below
    resume = torch.load(resume_path, weights_only=True) if resume_path.exists() else None
    if resume is not None and resume.get("config") != to_dict(cfg):
        raise UsageError(f"{resume_path} was made with other settings; pass --overwrite to start over")
    if defense is not None and defense.kind == "data":  # stored once as the platform / scraper stores them
        dataset = defended_dataset(dataset, defense, seed=cfg.train.seed)
    elif len(dataset) * math.prod(data[0][0].shape) <= IN_MEMORY_BYTES:
        dataset = materialize(dataset)  # decoded (and poisoned) once, not once per epoch; the same uint8 images
    evals: list[dict[str, float]] = list(resume.get("epoch_evals", [])) if resume is not None else []
    steps_per_epoch = len(dataset) // cfg.train.batch_size
    bar = progress(cfg.train.epochs * steps_per_epoch, "train", "step") if rank() == 0 else no_progress(0, "", "")
    if resume is not None:
        bar.update((int(resume["epoch"]) + 1) * steps_per_epoch)

    def on_epoch_end(epoch: int, state: dict) -> None:
        out.parent.mkdir(parents=True, exist_ok=True)
        last = epoch + 1 == cfg.train.epochs
        if epoch_eval is not None and eval_every > 0 and ((epoch + 1) % eval_every == 0 or last):
            was_training = model.training
            metrics = {"epoch": epoch + 1, **epoch_eval(model, epoch)}
            model.train(was_training)
            if all(metrics["score"] > e["score"] for e in evals):
                save_checkpoint(best_path, model, {**meta_of(built, classes, data, faces), "best_epoch": epoch + 1,
                                                   "best": metrics})
            evals.append(metrics)
        atomic_torch_save({**state, "config": to_dict(cfg), "epoch_evals": evals}, resume_path)

    start = time.perf_counter()
    history = train_classifier(model, dataset, cfg.train, device=device, loss_fn=face_loss if faces else
                               cross_entropy_loss, resume=resume, on_epoch_end=on_epoch_end,
                               progress=lambda step, steps, loss: bar.update(1, loss=f"{loss:.3f}"),
                               hooks=training_hooks(defense) if defense is not None else None)
    bar.close()
    if rank() != 0:
        return None
    meta = meta_of(built, classes, data, faces)
    meta |= {"config": to_dict(cfg), "history": history, "poisons": poison_info, "world_size": world_size(),
             "defense": to_dict(cfg.defense) if cfg.defense else None,
             "train_seconds": time.perf_counter() - start, "code_revision": code_revision(),
             "final_loss": history[-1]["loss"] if history else None,
             "train_accuracy": train_accuracy(model, dataset, faces, device)}
    if evals:
        best = max(evals, key=lambda e: e["score"])
        meta |= {"epoch_evals": evals, "best_epoch": best["epoch"], "best_checkpoint": best_path.name}
    if test is not None:
        logits, labels = predict(model, test, device=device)
        meta["test_accuracy"] = top1_accuracy(logits.numpy(), labels.numpy())
        meta["test_images"] = len(test)
    save_checkpoint(out, model.cpu(), meta)
    if resume_path.exists():
        resume_path.unlink()
    return meta


def meta_of(cfg: TrainCommandConfig, classes: list[str], data, faces: bool) -> dict[str, Any]:
    """What rebuilds the model of a checkpoint (see :func:`facepoison.runtime.build_classifier`)."""
    mc = cfg.model
    meta: dict[str, Any] = {"model": mc.name, "width": mc.width, "num_classes": len(classes), "classes": classes,
                            "image_shape": list(data[0][0].shape)}
    if faces:
        meta.update({"kind": "face", "embedding_size": mc.embedding_size, "dropout": mc.dropout,
                     "cosface_s": mc.cosface_s, "cosface_m": mc.cosface_m, "stem_stride": mc.stem_stride})
    else:
        mean, std = default_normalization(mc.name)
        meta.update({"kind": "classifier", "mean": list(mean), "std": list(std)})
    return meta
