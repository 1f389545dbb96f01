"""Evaluating recognizers: the engine of ``facepoison evaluate`` and of the experiment's evaluation stage.

Face recognizers: pair verification (LFW, CFP-FF/FP, insightface ``.bin`` sets; 10-fold, best threshold,
flip-TTA embeddings) and kNN identification on held-out identities, several models side by side, the first
being the reference. Aligned benchmark faces and embeddings are cached by content. Classifiers: test
accuracy.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.metrics import roc_curve

from eval.benchmarks import BENCHMARK_NAMES, PairSet, load_bin, load_cfp_pairs, load_lfw_pairs
from eval.faces import FaceCache, align_sources, source_key
from eval.identification import gallery_probe_split, knn_topk
from eval.metrics import top1_accuracy
from eval.report import accuracy_table, detail_table, plot_roc
from eval.verification import pair_scores, verify
from facepoison.data import load_dataset
from facepoison.errors import UsageError
from facepoison.provenance import code_revision, file_sha256
from facepoison.runtime import (
    ProgressFactory,
    check_writable,
    load_classifier,
    machine_name,
    no_progress,
    resolve_device,
)
from facepoison.training import read_identities
from recognition.atomic import atomic_path, atomic_write
from recognition.embed import ArrayFaces, embed_dataset
from recognition.faceset import FaceSet
from recognition.train import predict


@dataclass(frozen=True)
class FaceEvaluation:
    """What to evaluate face recognizers on.

    Attributes:
        models: ``(label, checkpoint)`` pairs; the first is the reference the drops are taken from.
        out: report folder (``report.json``, ``report.md``, ``roc.png``).
        lfw, lfw_pairs: LFW root and its View-2 ``pairs.txt``.
        cfp: CFP root (its ``Protocol/`` is all that is needed when ``cfp_faces`` is given).
        cfp_faces: prepared CFP face set (``facepoison prepare --layout cfp``): no detection, no raw images.
        cfp_protocols: ``FF``, ``FP`` or both, comma-separated.
        cfp_folds: only these 1-based folds (e.g. ``8-10``), those no training identity is in.
        bins: ``(benchmark name, file.bin)`` pairs of insightface verification sets.
        ident, ident_split: prepared face set and the identities of it to identify (held-out ones).
        gallery_per_identity: gallery faces per identity (default: half of each identity's faces).
        cache: cache folder (default ``out/cache``).
        title: heading of ``report.md``.
        batch_size: embedding batch size.
        device: ``auto``, ``cpu``, ``cuda``.
        command: the command line recorded in the report.

    Example:
        >>> FaceEvaluation(models=(("clean", "clean.pt"),), out="reports/x", cfp_folds="8-10").cfp_protocols
        'FF,FP'
    """

    models: tuple[tuple[str, str], ...]
    out: str
    lfw: str | None = None
    lfw_pairs: str | None = None
    cfp: str | None = None
    cfp_faces: str | None = None
    cfp_protocols: str = "FF,FP"
    cfp_folds: str | None = None
    bins: tuple[tuple[str, str], ...] = ()
    ident: str | None = None
    ident_split: str | None = None
    gallery_per_identity: int | None = None
    cache: str | None = None
    title: str = "Face recognition evaluation"
    batch_size: int = 128
    device: str | None = None
    command: str = "facepoison evaluate"


def parse_folds(text: str | None) -> set[int] | None:
    """``"8-10"`` → {8, 9, 10}; ``"1,3,5"`` → {1, 3, 5}; None → None (all folds)."""
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
    """The benchmark's canonical name (``agedb-30`` → ``AgeDB-30``); a one-line UsageError if unknown."""
    for b in BENCHMARK_NAMES:
        if name.lower().replace("_", "-") == b.lower():
            return b
    raise UsageError(f"unknown benchmark {name!r}; use one of {', '.join(BENCHMARK_NAMES)}")


def _subset(pairs: PairSet, keep: np.ndarray) -> PairSet:
    idx = np.flatnonzero(keep)
    return PairSet(pairs.name, [pairs.left[i] for i in idx], [pairs.right[i] for i in idx], pairs.same[idx],
                   pairs.folds[idx])


def load_benchmarks(cfg: FaceEvaluation) -> list[PairSet]:
    """The verification pair sets of ``cfg`` (checked: pairs go together, folds select something)."""
    benches: list[PairSet] = []
    if bool(cfg.lfw) != bool(cfg.lfw_pairs):
        raise UsageError("--lfw and --lfw-pairs go together")
    if cfg.lfw:
        benches.append(load_lfw_pairs(cfg.lfw, cfg.lfw_pairs))
    if cfg.cfp:
        folds = parse_folds(cfg.cfp_folds)
        for protocol in [s.strip().upper() for s in cfg.cfp_protocols.split(",") if s.strip()]:
            pairs = load_cfp_pairs(cfg.cfp, protocol, require_images=not cfg.cfp_faces)
            if folds is not None:
                pairs = _subset(pairs, np.isin(pairs.folds + 1, sorted(folds)))
                if len(pairs) == 0:
                    raise UsageError(f"--cfp-folds {cfg.cfp_folds} selects no CFP-{protocol} pair")
            benches.append(pairs)
    for name, path in cfg.bins:
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


def check_models(models: tuple[tuple[str, str], ...]) -> None:
    """Labels are unique and every checkpoint file exists."""
    seen: set[str] = set()
    for label, path in models:
        if label in seen:
            raise UsageError(f"two models are labelled {label!r}; name them with --model LABEL=CKPT")
        if not Path(path).is_file():
            raise UsageError(f"model checkpoint {path} does not exist")
        seen.add(label)


def evaluate_faces(cfg: FaceEvaluation, progress: ProgressFactory = no_progress) -> dict[str, Any]:
    """Evaluate every model of ``cfg``; write ``report.json``, ``report.md`` and ``roc.png`` into ``cfg.out``.

    Returns:
        The report: per model (``models``) its verification results per benchmark and its identification
        top-1/top-5, the protocol, command, machine, date and code revision.
    """
    check_models(cfg.models)
    if not cfg.models:
        raise UsageError("give at least one --model")
    out = Path(cfg.out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} exists and is not a folder")
    check_writable(out)
    loaded = []
    for label, path in cfg.models:
        model, _ = load_classifier(path, kind="face")
        loaded.append((label, path, model, file_sha256(path)[:16]))
    benches = load_benchmarks(cfg)
    ident = None
    if bool(cfg.ident) != bool(cfg.ident_split):
        raise UsageError("--ident and --ident-split go together")
    if cfg.ident:
        ident = FaceSet(cfg.ident).restrict(read_identities(cfg.ident_split))
        if len(ident.identities) < 2 or len(ident) < 2:
            raise UsageError(f"{cfg.ident_split} leaves fewer than 2 identities or faces to identify")
    if not benches and ident is None:
        raise UsageError("nothing to evaluate: give --lfw/--cfp/--bin and/or --ident, or --data for classifiers")
    cache = FaceCache(cfg.cache or out / "cache")
    device = resolve_device(cfg.device)
    start = time.perf_counter()
    known = known_cfp_faces(cfg.cfp_faces, cfg.cfp) if cfg.cfp else {}
    known_sha = file_sha256(cfg.cfp_faces) if cfg.cfp_faces else ""

    def detector():
        from recognition.detect import FaceDetector

        return FaceDetector(device=device)

    prepared = []  # aligned faces per benchmark (cached)
    for pairs in benches:
        sources = list(dict.fromkeys(pairs.left + pairs.right))
        key = source_key(sources, f"{pairs.name}|{known_sha}", known=known)
        got = cache.faces(key)
        if got is None:
            bar = progress(len(sources), f"align {pairs.name}", "image")
            got = align_sources(sources, detector, known=known if cfg.cfp_faces else None, progress=bar.update)
            bar.close()
            cache.put_faces(key, *got)
        index = {s: i for i, s in enumerate(sources)}
        prepared.append((pairs, key, got[0], got[1], np.array([index[s] for s in pairs.left]),
                         np.array([index[s] for s in pairs.right])))
    ident_key = None
    if ident is not None:
        ident_key = source_key([], f"{Path(cfg.ident).resolve()}|{file_sha256(cfg.ident)}|{ident.identities}")

    reports, curves = [], {}
    for label, path, model, sha in loaded:
        def embeddings(key: str, dataset, what: str, model=model, sha=sha, label=label) -> np.ndarray:
            emb = cache.embeddings(sha, key)
            if emb is None:
                bar = progress(len(dataset), f"embed {label} {what}", "face")
                emb = embed_dataset(model, dataset, batch_size=cfg.batch_size, device=device, progress=bar.update)
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
            identification = identify(embeddings(ident_key, ident, "identification"), ident.labels.numpy(),
                                      cfg.gallery_per_identity)
            identification["identities"] = len(ident.identities)
        reports.append({"label": label, "model": path, "sha256_16": sha, "verification": verification,
                        "identification": identification})

    protocol = {
        "verification": "10-fold (or the selected folds) accuracy, threshold chosen on the other folds; cosine "
                        "similarity of flip-TTA embeddings; undetected images use their centre square",
        "identification": ("kNN (cosine) over distinct identities; gallery = "
                           + (f"{cfg.gallery_per_identity} face(s)" if cfg.gallery_per_identity else "half")
                           + " of each identity's faces (seeded shuffle, seed 0), the rest are probes"),
        "cfp_folds": cfg.cfp_folds, "ident": cfg.ident, "ident_split": cfg.ident_split,
    }
    first = reports[0]
    report = {"model": first["model"], "verification": first["verification"],
              "identification": first["identification"], "models": reports, "protocol": protocol,
              "command": cfg.command, "machine": machine_name(device),
              "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
              "code_revision": code_revision(), "seconds": round(time.perf_counter() - start, 1)}
    write_face_report(report, curves, out, cfg.title)
    return report


def identify(embeddings: np.ndarray, labels: np.ndarray, gallery_per_identity: int | None = None) -> dict[str, Any]:
    """kNN identification top-1/top-5 of (flip-TTA, normalized) embeddings with a seeded gallery/probe split."""
    g, q = gallery_probe_split(labels, gallery_per_identity, seed=0)
    if len(q) == 0:
        raise UsageError("identification has no probe faces (every face went to the gallery)")
    topk = knn_topk(embeddings[q], labels[q], embeddings[g], labels[g], ks=(1, 5))
    return {"top1": topk[1], "top5": topk[5], "queries": int(len(q)), "gallery": int(len(g))}


def write_face_report(report: dict[str, Any], curves: dict, out: Path, title: str) -> None:
    """``report.json``, ``report.md`` (the accuracy table with drops from the first model) and ``roc.png``."""
    reports, first = report["models"], report["models"][0]
    protocol = report["protocol"]
    md = "\n\n".join([
        f"# {title}", f"Generated by `{report['command']}` on {report['machine']}, {report['date']}, "
        f"code {report['code_revision']}.",
        "Accuracies in %; verification as mean ± std over folds; in brackets the change from "
        f"**{first['label']}** in points.", accuracy_table(reports), "## Verification details", detail_table(reports),
        f"Protocol: {protocol['verification']}. Identification: {protocol['identification']}.",
        "![ROC](roc.png)", ""])
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / "roc.png") as tmp:
        plot_roc(curves, tmp)
    atomic_write(out / "report.json", json.dumps(report, indent=2))
    atomic_write(out / "report.md", md)


def evaluate_classifier(path: str, data: str, split: str = "test", batch_size: int = 128,
                        device: str | None = None) -> dict[str, Any]:
    """Test accuracy of a classifier checkpoint on ``data`` [``split``]."""
    model, meta = load_classifier(path, kind="classifier")
    images = load_dataset(data, split, meta["config"]["data"].get("image_size"))
    if len(images.classes) != meta["num_classes"]:
        raise UsageError(f"model has {meta['num_classes']} classes, {data} [{split}] has {len(images.classes)}")
    logits, labels = predict(model, images, batch_size=batch_size, device=resolve_device(device))
    return {"model": path, "data": data, "split": split, "images": len(images),
            "accuracy": top1_accuracy(logits.numpy(), labels.numpy())}
