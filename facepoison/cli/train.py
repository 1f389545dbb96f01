"""``facepoison train DATA --out CKPT``: train a classifier or a CosFace face recognizer (surrogate or
victim), optionally with a poison store applied on top of the training images and a defense (``--defense``).

DATA is an ImageFolder tree or cifar-10-batches-py folder (classification), or a face set from
``facepoison prepare`` (FACES.h5: CosFace recognizer, restricted to ``--identities FILE`` if given).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path

from facepoison.cli.common import EXIT_OK, add_common, progress_bars, run_command
from facepoison.config import DefenseSpec, TrainCommandConfig, load_config
from facepoison.data import has_split, load_dataset
from facepoison.runtime import check_output_file, init_distributed
from facepoison.store import load_store
from facepoison.training import is_face_set, load_data, train_checkpoint


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``facepoison train`` (every flag it defines is used)."""
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
    p.add_argument("--defense", help="train as a defending scraper would, e.g. jpeg:quality=75, resize:size=64, "
                   "grayscale, blur:sigma=1, noise:sigma=8, median, iss, cutout, mixup, cutmix, adv_train:eps=8, "
                   "dp_sgd:clip=1,noise_multiplier=0.01, victim_arch:name=resnet50 (NAME[:KEY=VALUE,...])")
    p.add_argument("--amp", action="store_const", const=True, help="bfloat16 autocast on CUDA")
    p.add_argument("--overwrite", action="store_true", help="replace an existing checkpoint")
    add_common(p)
    return p


def resolve_config(args: argparse.Namespace) -> TrainCommandConfig:
    """The command's config: ``--config`` YAML (if any) with every given flag overriding it."""
    return load_config(TrainCommandConfig, args.config, {
        "data.root": args.data, "data.identities": args.identities, "data.subset": args.subset,
        "data.subset_seed": args.subset_seed,
        "data.image_size": args.image_size, "model.name": args.model, "model.width": args.width,
        "model.stem_stride": args.stem_stride,
        "train.epochs": args.epochs, "train.batch_size": args.batch_size, "train.lr": args.lr,
        "train.seed": args.seed, "train.amp": args.amp, "poisons": args.poisons, "device": args.device,
    })


def run(args: argparse.Namespace) -> int:
    """Check data, output and poisons, then train and print the checkpoint's summary as JSON."""
    cfg = resolve_config(args)
    if args.defense:
        cfg = dataclasses.replace(cfg, defense=DefenseSpec.parse(args.defense))
    if cfg.defense:
        cfg.defense.build()  # an unknown defense or parameter fails here, before anything is read
    out = Path(args.out)
    data = load_data(cfg.data)  # the data is checked first: a missing folder is the first thing reported
    check_output_file(out, [cfg.data.root], args.overwrite)
    if cfg.poisons:
        load_store(cfg.poisons)  # a missing or unfinished store fails here, before training
    _, _, device = init_distributed(cfg.device)
    test = None
    if not is_face_set(cfg.data.root) and cfg.test_split and has_split(cfg.data.root, cfg.test_split):
        test = load_dataset(cfg.data.root, cfg.test_split, cfg.data.image_size)
    meta = train_checkpoint(cfg, data, test, out, device, fresh=args.overwrite, progress=progress_bars(not args.quiet))
    if meta is not None:
        summary = {k: meta[k] for k in ("test_accuracy", "test_images", "train_seconds", "train_accuracy",
                                        "final_loss") if k in meta}
        print(json.dumps({"checkpoint": str(out), **summary}))
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    """``facepoison train ARGV``: 0 on success, 2 on bad input (one line on stderr)."""
    return run_command("train", build_parser(), run, argv)
