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
import os
import platform
import shlex
import sys
import time
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import roc_curve
from torch.utils.data import Dataset

from eval.benchmarks import BENCHMARK_NAMES, PairSet, load_bin, load_cfp_pairs, load_lfw_pairs
from eval.faces import FaceCache, align_sources, source_key
from eval.identification import gallery_probe_split, knn_topk
from eval.metrics import top1_accuracy
from eval.report import detail_table, plot_roc, table6
from eval.verification import pair_scores, verify
from facepoison.cli.common import EXIT_OK, Progress, add_common, load_classifier, resolve_device, run_command
from facepoison.cli.train import read_identities
from facepoison.data import load_dataset
from facepoison.errors import UsageError
from facepoison.provenance import code_revision, file_sha256
from recognition.embed import ArrayFaces, embed_dataset
from recognition.faceset import FaceSet
from recognition.train import predict


def build_parser() -> argparse.ArgumentParser:
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


def atomic_write(path: Path, data: str | bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data.encode() if isinstance(data, str) else data)
    os.replace(tmp, path)


def run_classification(args: argparse.Namespace) -> int:
    if len(args.model) != 1:
        raise UsageError("--data evaluates one classifier; give --model once")
    path = args.model[0].split("=", 1)[-1]
    model, meta = load_classifier(path)
    data = load_dataset(args.data, args.split, meta["config"]["data"].get("image_size"))
    if len(data.classes) != meta["num_classes"]:
        raise UsageError(f"model has {meta['num_classes']} classes, {args.data} [{args.split}] has {len(data.classes)}")
    logits, labels = predict(model, data, batch_size=args.batch_size, device=resolve_device(args.device))
    report = {"model": path, "data": args.data, "split": args.split, "images": len(data),
              "accuracy": top1_accuracy(logits.numpy(), labels.numpy())}
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(out, json.dumps(report, indent=2))
    print(json.dumps(report))
    return EXIT_OK


def parse_models(specs: list[str]) -> list[tuple[str, str]]:
    out, seen = [], set()
    for spec in specs:
        label, _, path = spec.rpartition("=") if "=" in spec else ("", "", spec)
        label = label or Path(path).stem
        if label in seen:
            raise UsageError(f"two models are labelled {label!r}; name them with --model LABEL=CKPT")
        if not Path(path).is_file():
            raise UsageError(f"model checkpoint {path} does not exist")
        seen.add(label)
        out.append((label, path))
    return out


def parse_folds(text: str | None) -> set[int] | None:
    if not text:
        return None
    folds: set[int] = set()
    try:
        for part in text.split(","):
            lo, _, hi = part.partition("-")
            folds.update(range(int(lo), int(hi or lo) + 1))
    except ValueError as exc:
        raise UsageError(f"cannot read --cfp-folds {text!r}; write e.g. 8-10 or 1,3,5") from exc
    return folds


def canonical_benchmark(name: str) -> str:
    for b in BENCHMARK_NAMES:
        if name.lower().replace("_", "-") == b.lower():
            return b
    raise UsageError(f"unknown benchmark {name!r}; use one of {', '.join(BENCHMARK_NAMES)}")


def subset(pairs: PairSet, keep: np.ndarray) -> PairSet:
    idx = np.flatnonzero(keep)
    return PairSet(pairs.name, [pairs.left[i] for i in idx], [pairs.right[i] for i in idx], pairs.same[idx],
                   pairs.folds[idx])


def load_benchmarks(args: argparse.Namespace) -> list[PairSet]:
    benches: list[PairSet] = []
    if bool(args.lfw) != bool(args.lfw_pairs):
        raise UsageError("--lfw and --lfw-pairs go together")
    if args.lfw:
        benches.append(load_lfw_pairs(args.lfw, args.lfw_pairs))
    if args.cfp:
        folds = parse_folds(args.cfp_folds)
        for protocol in [s.strip().upper() for s in args.cfp_protocols.split(",") if s.strip()]:
            pairs = load_cfp_pairs(args.cfp, protocol, require_images=not args.cfp_faces)
            if folds is not None:
                pairs = subset(pairs, np.isin(pairs.folds + 1, sorted(folds)))
                if len(pairs) == 0:
                    raise UsageError(f"--cfp-folds {args.cfp_folds} selects no CFP-{protocol} pair")
            benches.append(pairs)
    for spec in args.bin:
        name, sep, path = spec.partition("=")
        if not sep:
            raise UsageError(f"--bin wants NAME=FILE.bin, got {spec!r}")
        benches.append(load_bin(path, canonical_benchmark(name)))
    names = [b.name for b in benches]
    if len(set(names)) != len(names):
        raise UsageError(f"a benchmark is given twice: {', '.join(names)}")
    return benches


def known_cfp_faces(path: str | None, cfp_root: str) -> dict[str, np.ndarray]:
    """Prepared CFP faces keyed by the absolute image path the pair loader uses."""
    if not path:
        return {}
    faces = FaceSet(path)
    root = Path(cfp_root).resolve()
    return {str(root / rel): faces[i][0].permute(1, 2, 0).numpy() for i, rel in enumerate(faces.paths)}


def run_faces(args: argparse.Namespace) -> int:
    if not args.out:
        raise UsageError("--out REPORT_DIR is required for face recognizers")
    models = parse_models(args.model)
    loaded = []
    for label, path in models:
        model, meta = load_classifier(path)
        if meta.get("kind") != "face":
            raise UsageError(f"{path} is not a face recognizer (train it on a face set); for classifiers use --data")
        loaded.append((label, path, model, file_sha256(path)[:16]))
    benches = load_benchmarks(args)
    ident = None
    if bool(args.ident) != bool(args.ident_split):
        raise UsageError("--ident and --ident-split go together")
    if args.ident:
        ident = FaceSet(args.ident).restrict(read_identities(args.ident_split))
        if len(ident.identities) < 2 or len(ident) < 2:
            raise UsageError(f"{args.ident_split} leaves fewer than 2 identities or faces to identify")
    if not benches and ident is None:
        raise UsageError("nothing to evaluate: give --lfw/--cfp/--bin and/or --ident, or --data for classifiers")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} exists and is not a folder")
    cache = FaceCache(args.cache or out / "cache")
    device = resolve_device(args.device)
    start = time.perf_counter()
    known = known_cfp_faces(args.cfp_faces, args.cfp) if args.cfp else {}

    def detector():
        from recognition.detect import FaceDetector

        return FaceDetector(device=device)

    # aligned faces per benchmark (cached)
    prepared = []
    for pairs in benches:
        sources = list(dict.fromkeys(pairs.left + pairs.right))
        key = source_key(sources, pairs.name)
        got = cache.faces(key)
        if got is None:
            bar = Progress(len(sources), f"align {pairs.name}", "image", enabled=not args.quiet)
            got = align_sources(sources, detector, known=known, progress=bar.update)
            bar.close()
            cache.put_faces(key, *got)
        index = {s: i for i, s in enumerate(sources)}
        prepared.append((pairs, key, got[0], got[1], np.array([index[s] for s in pairs.left]),
                         np.array([index[s] for s in pairs.right])))
    ident_key = None
    if ident is not None:
        ident_key = source_key([], f"{Path(args.ident).resolve()}|{file_sha256(args.ident)}|{ident.identities}")

    reports, curves = [], {}
    for label, path, model, sha in loaded:
        def embeddings(key: str, dataset: Dataset, what: str, model=model, sha=sha, label=label) -> np.ndarray:
            emb = cache.embeddings(sha, key)
            if emb is None:
                bar = Progress(len(dataset), f"embed {label} {what}", "face", enabled=not args.quiet)
                emb = embed_dataset(model, dataset, batch_size=args.batch_size, device=device, progress=bar.update)
                bar.close()
                cache.put_embeddings(sha, key, emb)
            return emb

        verification = {}
        for pairs, key, faces, undetected, li, ri in prepared:
            emb = embeddings(key, ArrayFaces(faces), pairs.name)
            scores = pair_scores(emb[li], emb[ri])
            res = verify(scores, pairs.same, folds=pairs.folds)
            fpr, tpr, _ = roc_curve(pairs.same, scores)
            curves.setdefault(pairs.name, {})[label] = (fpr, tpr, res.auc)
            verification[pairs.name] = {**res.as_dict(), "folds": len(np.unique(pairs.folds)),
                                        "undetected": int(undetected.sum())}
        identification = None
        if ident is not None:
            emb = embeddings(ident_key, ident, "identification")
            labels = ident.labels.numpy()
            g, q = gallery_probe_split(labels, args.gallery_per_identity, seed=0)
            if len(q) == 0:
                raise UsageError("identification has no probe faces (every face went to the gallery)")
            topk = knn_topk(emb[q], labels[q], emb[g], labels[g], ks=(1, 5))
            identification = {"top1": topk[1], "top5": topk[5], "queries": int(len(q)), "gallery": int(len(g)),
                              "identities": len(ident.identities)}
        reports.append({"label": label, "model": path, "sha256_16": sha, "verification": verification,
                        "identification": identification})

    protocol = {
        "verification": "10-fold (or the selected folds) accuracy, threshold chosen on the other folds; cosine "
                        "similarity of flip-TTA embeddings; undetected images use their centre square",
        "identification": ("kNN (cosine) over distinct identities; gallery = "
                           + (f"{args.gallery_per_identity} face(s)" if args.gallery_per_identity else "half")
                           + " of each identity's faces (seeded shuffle, seed 0), the rest are probes"),
        "cfp_folds": args.cfp_folds, "ident": args.ident, "ident_split": args.ident_split,
    }
    first = reports[0]
    report = {"model": first["model"], "verification": first["verification"],
              "identification": first["identification"], "models": reports, "protocol": protocol,
              "command": "facepoison evaluate " + shlex.join(args.argv),
              "machine": machine_name(device), "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
              "code_revision": code_revision(), "seconds": round(time.perf_counter() - start, 1)}
    md = "\n\n".join([
        f"# {args.title}", f"Generated by `{report['command']}` on {report['machine']}, {report['date']}, "
        f"code {report['code_revision']}.",
        "Accuracies in %; verification as mean ± std over folds; in brackets the change from "
        f"**{first['label']}** in points.", table6(reports), "## Verification details", detail_table(reports),
        f"Protocol: {protocol['verification']}. Identification: {protocol['identification']}.",
        "![ROC](roc.png)", ""])
    out.mkdir(parents=True, exist_ok=True)
    roc_tmp = out / "roc.png.tmp"
    plot_roc(curves, roc_tmp)
    atomic_write(out / "report.json", json.dumps(report, indent=2))
    atomic_write(out / "report.md", md)
    os.replace(roc_tmp, out / "roc.png")
    summary = {r["label"]: {**({"top1": r["identification"]["top1"]} if r["identification"] else {}),
                            **{b: round(v["accuracy"], 4) for b, v in r["verification"].items()}} for r in reports}
    print(json.dumps({"report": str(out / "report.json"), **summary}))
    return EXIT_OK


def machine_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.machine()} CPU ({os.cpu_count()} cores), torch {torch.__version__}"


def run(args: argparse.Namespace) -> int:
    return run_classification(args) if args.data else run_faces(args)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[2:] if argv is None else argv)
    parser = build_parser()
    parser.set_defaults(argv=argv)  # recorded in the report
    return run_command("evaluate", parser, run, argv)
