"""``facepoison evaluate --model CKPT --data DATA``: test accuracy of a classifier checkpoint."""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Sequence
from pathlib import Path

from eval.metrics import top1_accuracy
from facepoison.cli.common import EXIT_OK, add_common, load_classifier, resolve_device, run_command
from facepoison.data import load_dataset
from facepoison.errors import UsageError
from recognition.train import predict


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="facepoison evaluate", description=__doc__)
    p.add_argument("--model", required=True, help="checkpoint from facepoison train")
    p.add_argument("--data", required=True, help="ImageFolder root or cifar-10-batches-py folder")
    p.add_argument("--split", default="test", help="split to evaluate on (default test)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--out", help="also write the report as JSON to this file")
    add_common(p)
    return p


def run(args: argparse.Namespace) -> int:
    model, meta = load_classifier(args.model)
    data = load_dataset(args.data, args.split, meta["config"]["data"].get("image_size"))
    if len(data.classes) != meta["num_classes"]:
        raise UsageError(f"model has {meta['num_classes']} classes, {args.data} [{args.split}] has {len(data.classes)}")
    logits, labels = predict(model, data, batch_size=args.batch_size, device=resolve_device(args.device))
    report = {"model": args.model, "data": args.data, "split": args.split, "images": len(data),
              "accuracy": top1_accuracy(logits.numpy(), labels.numpy())}
    text = json.dumps(report)
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(out.name + ".tmp")
        tmp.write_text(json.dumps(report, indent=2))
        os.replace(tmp, out)
    print(text)
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    return run_command("evaluate", build_parser(), run, argv)
