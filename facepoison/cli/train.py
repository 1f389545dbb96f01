"""``facepoison train DATA --out CKPT``: train a classifier or a CosFace face recognizer (surrogate or
victim), optionally with a poison store applied on top of the training images.

DATA is an ImageFolder tree or cifar-10-batches-py folder (classification), or a face set from
``facepoison prepare`` (FACES.h5: CosFace recognizer, restricted to ``--identities FILE`` if given).
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

from eval.metrics import top1_accuracy
from facepoison.cli.common import EXIT_OK, Progress, add_common, init_distributed, run_command
from facepoison.config import TrainCommandConfig, load_config, to_dict
from facepoison.data import ImageSet, has_split, load_dataset
from facepoison.errors import UsageError
from facepoison.provenance import code_revision, file_sha256
from facepoison.store import PoisonedDataset, load_store
from recognition.checkpoint import atomic_torch_save, save_checkpoint
from recognition.faceset import FaceSet
from recognition.heads import create_recognizer
from recognition.models import create_model, default_normalization
from recognition.train import cross_entropy_loss, predict, rank, train_classifier, world_size


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="facepoison train", description=__doc__)
    p.add_argument("data", help="ImageFolder root (train/, test/), cifar-10-batches-py folder, or FACES.h5")
    p.add_argument("--out", required=True, help="checkpoint to write (CKPT; CKPT.json gets the resolved config)")
    p.add_argument("--identities", help="face sets: train on the identities named in this file, one per line")
    p.add_argument("--config", help="YAML config (sections data, model, train)")
    p.add_argument("--model", help="resnet18 (default), resnet34, resnet50 (CIFAR stem, or the face backbone for "
                   "face sets), or tv:<torchvision name>")
    p.add_argument("--width", type=int, help="first-stage width of the ResNets (default 64)")
    p.add_argument("--stem-stride", type=int, choices=(1, 2),
                   help="face backbones: stride of the stem (1 standard, 2 for a quarter of the compute)")
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--seed", type=int, help="seed of initialisation, shuffling and augmentation")
    p.add_argument("--subset", type=int, help="train on this many images (class-balanced, fixed by --subset-seed)")
    p.add_argument("--subset-seed", type=int)
    p.add_argument("--image-size", type=int, help="resize and centre-crop images to this size")
    p.add_argument("--poisons", help="poison store (STORE.h5) to apply on top of the training images")
    p.add_argument("--amp", action="store_const", const=True, help="bfloat16 autocast on CUDA")
    p.add_argument("--overwrite", action="store_true", help="replace an existing checkpoint")
    add_common(p)
    return p


def resolve_config(args: argparse.Namespace) -> TrainCommandConfig:
    return load_config(TrainCommandConfig, args.config, {
        "data.root": args.data, "data.identities": args.identities, "data.subset": args.subset,
        "data.subset_seed": args.subset_seed,
        "data.image_size": args.image_size, "model.name": args.model, "model.width": args.width,
        "model.stem_stride": args.stem_stride,
        "train.epochs": args.epochs, "train.batch_size": args.batch_size, "train.lr": args.lr,
        "train.seed": args.seed, "train.amp": args.amp, "poisons": args.poisons, "device": args.device,
    })


def run(args: argparse.Namespace) -> int:
    cfg = resolve_config(args)
    out = Path(args.out)
    if out.exists() and not args.overwrite:
        raise UsageError(f"{out} already exists; pass --overwrite to retrain")
    _, _, device = init_distributed(cfg.device)
    test = None
    if is_face_set(cfg.data.root):
        data = load_face_data(cfg)
    else:
        data = load_dataset(cfg.data.root, cfg.data.split, cfg.data.image_size, cfg.data.subset,
                            cfg.data.subset_seed)
        if cfg.test_split and has_split(cfg.data.root, cfg.test_split):
            test = load_dataset(cfg.data.root, cfg.test_split, cfg.data.image_size)
    meta = train_checkpoint(cfg, data, test, out, device, fresh=args.overwrite, quiet=args.quiet)
    if meta is not None:
        summary = {k: meta[k] for k in ("test_accuracy", "test_images", "train_seconds") if k in meta}
        print(json.dumps({"checkpoint": str(out), **summary}))
    return EXIT_OK


def is_face_set(root: str) -> bool:
    return Path(root).is_file()


def read_identities(path: str) -> list[str]:
    p = Path(path)
    if not p.is_file():
        raise UsageError(f"identities file {p} does not exist")
    names = [line.strip() for line in p.read_text().splitlines() if line.strip() and not line.startswith("#")]
    if not names:
        raise UsageError(f"identities file {p} names no identity")
    return names


def load_face_data(cfg: TrainCommandConfig) -> FaceSet:
    faces = FaceSet(cfg.data.root)
    if cfg.data.identities:
        faces = faces.restrict(read_identities(cfg.data.identities))
    if len(faces) == 0:
        raise UsageError(f"no faces to train on in {cfg.data.root}")
    return faces


def face_loss(net: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """CosFace loss: cross-entropy of the margin logits (the recognizer applies the margin given labels)."""
    return F.cross_entropy(net(images, labels), labels)


def train_checkpoint(
    cfg: TrainCommandConfig, data: ImageSet | FaceSet, test: ImageSet | None, out: Path, device: torch.device,
    fresh: bool = False, quiet: bool = False,
) -> dict | None:
    """Train on ``data`` (with ``cfg.poisons`` applied), evaluate on ``test``, save ``out`` (+ ``.json``).

    Resumes from ``out.resume.pt`` (saved after every epoch) unless ``fresh``. Returns the checkpoint's
    meta on rank 0, None on other ranks.
    """
    out = Path(out)
    resume_path = out.with_name(out.name + ".resume.pt")
    if fresh and resume_path.exists():
        resume_path.unlink()
    faces = isinstance(data, FaceSet)
    classes = data.identities if faces else data.classes
    num_classes = len(classes)
    torch.manual_seed(cfg.train.seed)
    mc = cfg.model
    if faces:
        model = create_recognizer(mc.name, num_classes, mc.width, mc.embedding_size, mc.dropout, mc.cosface_s,
                                  mc.cosface_m, mc.stem_stride)
    else:
        model = create_model(mc.name, num_classes, width=mc.width)
    dataset = data
    poison_info = None
    if cfg.poisons:
        poisons = load_store(cfg.poisons)
        dataset = PoisonedDataset(data, poisons)
        poison_info = {"path": str(cfg.poisons), "sha256": file_sha256(cfg.poisons), "eps": poisons.attrs.get("eps"),
                       "objective": poisons.attrs.get("objective"), "poisoned": dataset.num_poisoned}
    resume = torch.load(resume_path, weights_only=True) if resume_path.exists() else None
    if resume is not None and resume.get("config") != to_dict(cfg):
        raise UsageError(f"{resume_path} was made with other settings; pass --overwrite to start over")
    steps_per_epoch = len(dataset) // cfg.train.batch_size
    bar = Progress(cfg.train.epochs * steps_per_epoch, "train", "step", enabled=not quiet and rank() == 0)
    if resume is not None:
        bar.update((int(resume["epoch"]) + 1) * steps_per_epoch)

    def on_epoch_end(epoch: int, state: dict) -> None:
        out.parent.mkdir(parents=True, exist_ok=True)
        atomic_torch_save({**state, "config": to_dict(cfg)}, resume_path)

    start = time.perf_counter()
    history = train_classifier(model, dataset, cfg.train, device=device, loss_fn=face_loss if faces else
                               cross_entropy_loss, resume=resume, on_epoch_end=on_epoch_end,
                               progress=lambda step, steps, loss: bar.update(1, loss=f"{loss:.3f}"))
    bar.close()
    if rank() != 0:
        return None
    meta = {"model": mc.name, "width": mc.width, "num_classes": num_classes, "classes": classes,
            "image_shape": list(data[0][0].shape)}
    if faces:
        meta.update({"kind": "face", "embedding_size": mc.embedding_size, "dropout": mc.dropout,
                     "cosface_s": mc.cosface_s, "cosface_m": mc.cosface_m, "stem_stride": mc.stem_stride})
    else:
        mean, std = default_normalization(mc.name)
        meta.update({"kind": "classifier", "mean": list(mean), "std": list(std)})
    meta |= {"config": to_dict(cfg), "history": history, "poisons": poison_info, "world_size": world_size(),
            "train_seconds": time.perf_counter() - start, "code_revision": code_revision()}
    if test is not None:
        logits, labels = predict(model, test, device=device)
        meta["test_accuracy"] = top1_accuracy(logits.numpy(), labels.numpy())
        meta["test_images"] = len(test)
    save_checkpoint(out, model.cpu(), meta)
    if resume_path.exists():
        resume_path.unlink()
    return meta


def main(argv: Sequence[str] | None = None) -> int:
    return run_command("train", build_parser(), run, argv)
