"""The face experiment in one command: the seed paper's Tables 6 and 7 on real faces, with baselines.

Stages (each cached under the run folder by a key of the config parts it depends on; an interrupted run
resumes at the first unfinished stage, and inside crafting, training and protecting at the first
unfinished chunk, epoch or photo):

1. prepare the CelebA-wild and CFP face sets (detection + alignment);
2. identity split: release / held-out / CFP evaluation folds;
3. CosFace surrogates trained on the clean release set;
4. poisons over the release set (alignment at each ε and surrogate; random and TensorClog baselines);
5. one victim trained from scratch on each set;
6. evaluation: held-out kNN identification, CFP-FF/FP verification (LFW and ``.bin`` sets when given);
7. the protect path: the release photos protected by ``facepoison protect``'s engine (bundled surrogate,
   imprinted identities), re-detected and aligned as a scraper would, and a victim trained on them.

The report (Markdown + JSON, ROC curves, a figure of clean and poisoned faces) is written by the command.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from facepoison.config import CraftCommandConfig, DataConfig, ModelConfig, TrainCommandConfig, to_dict
from facepoison.crafter import CrafterConfig
from facepoison.errors import UsageError
from facepoison.provenance import code_revision
from recognition.train import TrainConfig

PAPER_TOP1 = {"clean": 91.0, 8.0: 85.5, 16.0: 61.5}
PAPER_R50_TOP1_8 = 79.5


@dataclass(frozen=True)
class ExperimentData:
    """Where the faces come from, and how the identities are split (see :mod:`recognition.release`)."""

    celeba_photos: str = "../shared/data/faces/celeba_wild"
    cfp_root: str = "../shared/data/faces/cfp"
    celeba_faces: str | None = None
    cfp_faces: str | None = None
    lfw_overlap: str | None = "../shared/data/faces/cfp/cfp_lfw_name_overlap.tsv"
    heldout: int = 80
    min_photos: int = 20
    split_seed: int = 0
    train_folds: tuple[int, ...] = (1, 7)
    celeba_identities: int | None = None
    cfp_identities: int | None = None
    faces_per_identity: int | None = None


@dataclass(frozen=True)
class PoisonRun:
    objective: str = "alignment"
    eps: float = 8.0
    surrogate: str = "resnet18"

    @property
    def name(self) -> str:
        sur = "" if self.objective == "random" else f"_{self.surrogate}"
        return f"{self.objective}{sur}_eps{self.eps:g}"

    @property
    def label(self) -> str:
        sur = "" if self.objective == "random" else f" ({self.surrogate.replace('resnet', 'R')})"
        return f"{self.objective} {self.eps:g}/255{sur}"


@dataclass(frozen=True)
class ProtectStage:
    enabled: bool = True
    surrogate: str | None = None
    eps: float = 8.0
    steps: int = 15
    identities: str = "folder"
    batch_size: int = 16


@dataclass(frozen=True)
class ExperimentConfig:
    name: str = "faces"
    run_dir: str = "runs/experiments"
    report_dir: str = "docs/results"
    data: ExperimentData = field(default_factory=ExperimentData)
    surrogates: Mapping[str, ModelConfig] = field(default_factory=lambda: {"resnet18": ModelConfig()})
    surrogate_train: TrainConfig = field(default_factory=TrainConfig)
    victim: ModelConfig = field(default_factory=ModelConfig)
    victim_train: TrainConfig = field(default_factory=TrainConfig)
    craft: CrafterConfig = field(default_factory=CrafterConfig)
    craft_batch_size: int = 64
    target_fraction: float = 0.1
    poisons: tuple[PoisonRun, ...] = ()
    protect: ProtectStage = field(default_factory=ProtectStage)
    lfw: str | None = None
    lfw_pairs: str | None = None
    bins: Mapping[str, str] = field(default_factory=dict)
    figure_faces: int = 4
    device: str = "auto"
    notes: str = ""


def key(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:10]


class Stages:
    """Runs the stages, keeping the wall time of each (also for cached stages, from their first run)."""

    def __init__(self, cfg: ExperimentConfig, config_path: Path, quiet: bool = False) -> None:
        self.cfg = cfg
        self.config_path = config_path
        self.quiet = quiet
        self.root = Path(cfg.run_dir) / cfg.name
        self.root.mkdir(parents=True, exist_ok=True)
        self.timings: dict[str, float] = {}
        from facepoison.cli.common import init_distributed

        _, _, self.device = init_distributed(cfg.device)

    def log(self, message: str) -> None:
        if not self.quiet:
            print(f"[experiment {self.cfg.name}] {message}", flush=True)

    def timed(self, name: str, marker: Path, fn) -> Any:
        """Run ``fn`` unless ``marker`` (its output) exists; remember the stage's seconds next to it."""
        stamp = marker.with_name(marker.name + ".stage.json")
        if marker.exists() and stamp.exists():
            self.timings[name] = json.loads(stamp.read_text())["seconds"]
            self.log(f"{name}: cached ({marker})")
            return None
        self.log(f"{name} ...")
        t0 = time.perf_counter()
        result = fn()
        seconds = time.perf_counter() - t0
        stamp.write_text(json.dumps({"seconds": round(seconds, 1)}))
        self.timings[name] = round(seconds, 1)
        return result

    # 1. prepare ----------------------------------------------------------------------------------------
    def prepared(self) -> tuple[Path, Path]:
        from facepoison.cli.prepare import main as prepare_main

        d = self.cfg.data
        out = []
        for given, src, layout, name in ((d.celeba_faces, d.celeba_photos, "folders", "celeba_wild"),
                                         (d.cfp_faces, d.cfp_root, "cfp", "cfp")):
            if given:
                if not Path(given).is_file():
                    raise UsageError(f"prepared face set {given} does not exist")
                out.append(Path(given))
                continue
            path = Path(self.cfg.run_dir) / "prepared" / f"{name}-{key(str(Path(src).resolve()), layout)}.h5"
            path.parent.mkdir(parents=True, exist_ok=True)

            def run(src=src, layout=layout, path=path):
                if not path.exists():
                    args = [src, "--out", str(path), "--layout", layout] + (["-q"] if self.quiet else [])
                    if prepare_main(args) != 0:
                        raise UsageError(f"preparing {src} failed")
            self.timed(f"prepare {name}", path, run)
            out.append(path)
        return out[0], out[1]

    # 2. split --------------------------------------------------------------------------------------------
    def split(self, celeba: Path, cfp: Path):
        from recognition.release import release_split

        d = self.cfg.data
        lo, hi = (int(v) for v in d.train_folds)
        t0 = time.perf_counter()
        split = release_split(celeba, cfp, d.cfp_root, n_heldout=d.heldout, min_photos=d.min_photos,
                              seed=d.split_seed, train_folds=(lo, hi), exclude_lfw=d.lfw_overlap,
                              celeba_identities=d.celeba_identities, cfp_identities=d.cfp_identities,
                              faces_per_identity=d.faces_per_identity)
        split.write(self.root / "splits", f"experiment {self.cfg.name}")
        self.timings["split"] = round(time.perf_counter() - t0, 1)
        return split

    # 3. surrogates / 5. victims -------------------------------------------------------------------------
    def train(self, stage: str, model: ModelConfig, train: TrainConfig, data, out: Path,
              poisons: Path | None = None) -> Path:
        from facepoison.cli.train import train_checkpoint

        cfg = TrainCommandConfig(data=DataConfig(root=str(out)), model=model, train=train,
                                 poisons=str(poisons) if poisons else None, test_split=None, device=self.cfg.device)
        out.parent.mkdir(parents=True, exist_ok=True)
        self.timed(stage, out, lambda: train_checkpoint(cfg, data, None, out, self.device, quiet=self.quiet))
        return out

    # 4. crafting ---------------------------------------------------------------------------------------
    def craft(self, run: PoisonRun, surrogate: Path | None, data, data_key: str) -> Path:
        from facepoison.cli.common import load_classifier
        from facepoison.cli.craft import craft_store

        craft_cfg = dataclasses.replace(self.cfg.craft, eps=float(run.eps))
        cfg = CraftCommandConfig(data=DataConfig(root=data_key), craft=craft_cfg, objective=run.objective,
                                 surrogate=str(surrogate) if surrogate else "",
                                 target_fraction=self.cfg.target_fraction, batch_size=self.cfg.craft_batch_size,
                                 device=self.cfg.device)
        out = self.root / "poisons" / f"{run.name}-{key(to_dict(cfg), str(surrogate))}.h5"
        out.parent.mkdir(parents=True, exist_ok=True)

        def go():
            if surrogate is None:  # random noise needs no surrogate: any model of the right shape will do
                from recognition.heads import create_recognizer

                model = create_recognizer("resnet18", len(data.identities), width=1, embedding_size=8)
                meta = {"num_classes": len(data.identities), "kind": "face"}
                path = out.with_suffix(".none.pt")
                from recognition.checkpoint import save_checkpoint

                save_checkpoint(path, model, meta)
                local = dataclasses.replace(cfg, surrogate=str(path))
            else:
                model, meta = load_classifier(str(surrogate))
                local = cfg
            craft_store(local, data, model, meta, out, self.device, quiet=self.quiet)

        self.timed(f"craft {run.name}", out, go)
        return out

    # 7. protect path -------------------------------------------------------------------------------------
    def protect(self, split, mode: str, suffix: str = "") -> tuple[Path, Any]:
        """The release photos protected with ``--identities mode``, prepared again as a scraper would."""
        p = dataclasses.replace(self.cfg.protect, identities=mode)
        from facepoison.protect import DEFAULT_SURROGATE, MANIFEST, Item, ProtectSettings, Surrogate, protect_photos
        from recognition.faceset import FaceSet

        d = self.cfg.data
        sur_path = Path(p.surrogate) if p.surrogate else DEFAULT_SURROGATE
        folder = self.root / f"protect-{key(dataclasses.asdict(p), split.release.paths)}"
        photos = folder / "photos"
        items = []
        for rel in split.release.paths:
            part, _, path = rel.partition("/")
            src_root = Path(d.celeba_photos if part == "celeba" else d.cfp_root)
            identity = Path(path).parts[0] if part == "celeba" else Path(path).parts[2]
            items.append(Item(src_root / path, rel, f"{part}/{identity}"))

        def run_protect():
            settings = ProtectSettings(eps=p.eps, steps=p.steps, identities=p.identities, batch_size=p.batch_size)
            protect_photos(items, photos, settings, Surrogate(sur_path, self.device), self.device, quiet=self.quiet)

        # resumable through the manifest; the stage stamp is written only when every photo is done
        photos.mkdir(parents=True, exist_ok=True)
        self.timed(f"protect photos{suffix}", photos / MANIFEST, run_protect)
        # a scraper detects and aligns the protected photos again
        faces = {}
        for part, layout in (("celeba", "folders"), ("cfp", "cfp")):
            src = photos / part
            out = folder / f"{part}.h5"
            if src.is_dir():
                from facepoison.cli.prepare import main as prepare_main

                def prep(src=src, out=out, layout=layout):
                    args = [str(src), "--out", str(out), "--layout", layout, "--overwrite"]
                    if prepare_main(args + (["-q"] if self.quiet else [])) != 0:
                        raise UsageError(f"preparing the protected photos in {src} failed")

                self.timed(f"prepare protected {part}{suffix}", out, prep)
                faces[part] = FaceSet(out)
        names = {"celeba": split.celeba_release, "cfp": split.cfp_release}
        parts = {part: fs.restrict([n for n in names[part] if n in set(fs.identities)]) for part, fs in faces.items()}
        protected = FaceSet.concat(parts)
        return folder, protected


def protect_modes(p: ProtectStage) -> list[str]:
    """The ``--identities`` modes of the protect path (``identities: folder,auto,single`` compares them)."""
    if not p.enabled:
        return []
    modes = list(dict.fromkeys(m.strip() for m in p.identities.split(",") if m.strip()))
    if not modes or set(modes) - {"folder", "auto", "single"}:
        raise UsageError(f"protect.identities must be folder, auto or single, or a comma-separated list of them; "
                         f"got {p.identities!r}")
    return modes


def _ident_split_file(stages: Stages) -> Path:
    return stages.root / "splits" / "celeba_heldout.txt"


def run_experiment(cfg: ExperimentConfig, config_path: Path, quiet: bool = False) -> dict:
    from facepoison.cli.evaluate import main as evaluate_main

    start = time.perf_counter()
    modes = protect_modes(cfg.protect)  # a bad mode or surrogate name fails before any stage runs
    used = {run.surrogate for run in cfg.poisons if run.objective != "random"}
    missing = sorted(used - set(cfg.surrogates))
    if missing:
        raise UsageError(f"poison runs name surrogates missing from surrogates: {', '.join(missing)}")
    st = Stages(cfg, config_path, quiet)
    celeba, cfp = st.prepared()
    split = st.split(celeba, cfp)
    if len(split.release) == 0 or not split.celeba_heldout:
        raise UsageError("the identity split leaves no release faces or no held-out identities")
    ids_key = key(split.release.paths, split.release.identities)
    st.log(f"release: {len(split.release)} faces of {len(split.release.identities)} identities; "
           f"held-out: {len(split.heldout)} faces of {len(split.celeba_heldout)} identities")
    surrogates = {}
    for name, mc in cfg.surrogates.items():
        if name not in used:  # only the surrogates some poison run crafts against
            continue
        out = st.root / "surrogates" / f"{name}-{key(to_dict(mc), to_dict(cfg.surrogate_train), ids_key)}.pt"
        surrogates[name] = st.train(f"surrogate {name}", mc, cfg.surrogate_train, split.release, out)
    stores: dict[str, tuple[PoisonRun, Path]] = {}
    for run in cfg.poisons:
        sur = surrogates.get(run.surrogate) if run.objective != "random" else None
        stores[run.name] = (run, st.craft(run, sur, split.release, f"release:{ids_key}"))
    victim_key = key(to_dict(cfg.victim), to_dict(cfg.victim_train), ids_key)
    victims: list[tuple[str, Path, dict]] = []
    clean = st.root / "victims" / f"clean-{victim_key}.pt"
    victims.append(("clean", st.train("victim clean", cfg.victim, cfg.victim_train, split.release, clean),
                    {"kind": "clean"}))
    for name, (run, store) in stores.items():
        out = st.root / "victims" / f"{name}-{key(victim_key, store.name)}.pt"
        victims.append((run.label, st.train(f"victim {name}", cfg.victim, cfg.victim_train, split.release, out,
                                            poisons=store), {"kind": "poison", **dataclasses.asdict(run)}))
    for mode in modes:
        suffix = f" ({mode})" if len(modes) > 1 else ""
        folder, faces = st.protect(split, mode, suffix)
        out = folder / f"victim-{victim_key}.pt"
        notes = ([] if cfg.protect.surrogate else ["bundled surrogate"]) + \
            ([f"{mode} identities"] if len(modes) > 1 else [])
        label = "protect" + (f" ({', '.join(notes)})" if notes else "")
        victims.append((label, st.train(f"victim protect{suffix}", cfg.victim, cfg.victim_train, faces, out),
                        {"kind": "protect", "identities": mode, "faces": len(faces)}))
    # 6. evaluation
    eval_dir = st.root / "eval"
    folds = ",".join(str(f) for f in split.eval_folds)
    args = [a for label, path, _ in victims for a in ("--model", f"{label}={path}")]
    args += ["--cfp", cfg.data.cfp_root, "--cfp-faces", str(cfp), "--ident", str(celeba),
             "--ident-split", str(_ident_split_file(st)), "--out", str(eval_dir),
             "--title", f"Face experiment {cfg.name}: victims"]
    if folds:
        args += ["--cfp-folds", folds]
    if cfg.lfw and cfg.lfw_pairs:
        args += ["--lfw", cfg.lfw, "--lfw-pairs", cfg.lfw_pairs]
    for bench, path in cfg.bins.items():
        args += ["--bin", f"{bench}={path}"]
    if cfg.device != "auto":
        args += ["--device", cfg.device]
    t0 = time.perf_counter()
    if evaluate_main(args + (["-q"] if quiet else [])) != 0:
        raise UsageError("evaluation failed (see the error above)")
    st.timings["evaluate"] = round(time.perf_counter() - t0, 1)
    evaluation = json.loads((eval_dir / "report.json").read_text())
    for (_, _, info), rep in zip(victims, evaluation["models"], strict=True):
        rep["run"] = info
    figure = figure2(split.release, stores, cfg, st.root / "figure2.png")
    result = {
        "config": to_dict(cfg), "config_file": str(config_path), "models": evaluation["models"],
        "protocol": evaluation["protocol"], "release": {"faces": len(split.release),
                                                        "identities": len(split.release.identities),
                                                        "celeba_identities": len(split.celeba_release),
                                                        "cfp_identities": len(split.cfp_release)},
        "heldout": {"identities": len(split.celeba_heldout), "faces": len(split.heldout)},
        "cfp_eval_folds": split.eval_folds, "timings_s": st.timings,
        "total_wall_s_this_invocation": round(time.perf_counter() - start, 1),
        "machine": evaluation["machine"], "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "code_revision": code_revision(), "command": f"facepoison experiment {config_path}",
    }
    write_report(result, cfg, config_path, eval_dir / "roc.png", figure)
    return result


def figure2(release, stores: dict, cfg: ExperimentConfig, path: Path) -> Path | None:
    """Clean release faces and their alignment-poisoned versions (lowest two ε of the first surrogate)."""
    from facepoison.store import load_store

    runs = sorted((r for r, _ in stores.values() if r.objective == "alignment"), key=lambda r: r.eps)
    first = runs[0].surrogate if runs else None
    runs = [r for r in runs if r.surrogate == first][:2]
    if not runs:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = min(cfg.figure_faces, len(release))
    rng = np.random.default_rng(0)
    picks = sorted(rng.choice(len(release), size=n, replace=False).tolist())
    sets = [load_store(stores[r.name][1]) for r in runs]
    fig, axes = plt.subplots(n, 1 + len(runs), figsize=(2.2 * (1 + len(runs)), 2.2 * n), squeeze=False)
    for row, i in zip(axes, picks, strict=True):
        image = release[i][0].numpy().astype(np.int16)
        row[0].imshow(image.transpose(1, 2, 0).astype(np.uint8))
        row[0].set_title("clean", fontsize=8)
        for ax, r, ps in zip(row[1:], runs, sets, strict=True):
            where = np.flatnonzero(ps.ids == int(release.ids[i]))
            delta = ps.delta[int(where[0])].numpy() if len(where) else 0
            ax.imshow(np.clip(image + delta, 0, 255).astype(np.uint8).transpose(1, 2, 0))
            ax.set_title(f"{r.eps:g}/255", fontsize=8)
        for ax in row:
            ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _top1(rep: dict) -> float | None:
    ident = rep.get("identification") or {}
    return ident.get("top1")


def goals(models: list[dict]) -> list[str]:
    """The issue's goals, each stated as met or not from the measured numbers."""
    by_label = {m["label"]: m for m in models}
    clean = _top1(by_label["clean"])
    out = []

    def drop(run_kind: str, eps: float, sur: str = "resnet18") -> float | None:
        for m in models:
            r = m.get("run", {})
            if r.get("objective") == run_kind and r.get("eps") == eps and (run_kind == "random" or
                                                                          r.get("surrogate") == sur):
                t = _top1(m)
                return None if t is None or clean is None else 100 * (clean - t)
        return None

    # Random ±ε noise should not change a victim; how far its victims move from clean is the run-to-run noise.
    noise = max((abs(d) for d in (drop("random", 8.0), drop("random", 16.0)) if d is not None), default=0.0)
    out.append(f"Noise level: the random-noise victims moved top-1 by up to {noise:.1f} points from clean; a drop "
               f"or a difference between drops within that is marked inconclusive.")

    def verdict(ok: bool, *values: float) -> str:
        if all(abs(v) <= noise for v in values):
            return "inconclusive (within the noise)"
        return "met" if ok else "NOT met"

    d16, d8 = drop("alignment", 16.0), drop("alignment", 8.0)
    if d16 is not None:
        out.append(f"16/255 top-1 drop ≥ 30 points (paper 29.5): {d16:.1f} → {'met' if d16 >= 30 else 'NOT met'}")
    if d8 is not None:
        out.append(f"8/255 top-1 drop > 5.5 points (paper): {d8:.1f} → {'met' if d8 > 5.5 else 'NOT met'}")
    for eps in (8.0, 16.0):
        a, r, t = drop("alignment", eps), drop("random", eps), drop("tensorclog", eps)
        if a is not None and r is not None:
            ok = a > 0 and a >= 3 * max(r, 0)
            out.append(f"{eps:g}/255: alignment drop {a:.1f} ≥ 3× random drop {r:.1f} → {verdict(ok, a)}")
        if a is not None and t is not None:
            out.append(f"{eps:g}/255: alignment drop {a:.1f} > TensorClog drop {t:.1f} → {verdict(a > t, a - t)}")
    prot = {m["run"]["identities"]: 100 * (clean - _top1(m)) for m in models
            if m.get("run", {}).get("kind") == "protect" and _top1(m) is not None and clean is not None}
    if len(prot) > 1:
        best = max(prot, key=prot.get)
        runner_up = max(v for k, v in prot.items() if k != best)
        drops = ", ".join(f"{k} {v:.1f}" for k, v in prot.items())
        # a mode protects best only if its own drop and its lead over the next mode both exceed the noise
        clear = prot[best] > noise and prot[best] - runner_up > noise
        out.append(f"protect --identities: top-1 drops {drops} → " + (
            f"{best} protects best" if clear else
            f"no mode protects measurably best (the best, {best}, is within the noise)"))
    r18, r50 = drop("alignment", 8.0, "resnet18"), drop("alignment", 8.0, "resnet50")
    if r18 is not None and r50 is not None:
        out.append(f"ResNet-50 surrogate hits harder than ResNet-18 at 8/255: drops {r50:.1f} vs {r18:.1f} → "
                   f"{verdict(r50 > r18, r50 - r18)}")
    return out


def write_report(result: dict, cfg: ExperimentConfig, config_path: Path, roc: Path, figure: Path | None) -> None:
    from eval.report import detail_table, table6

    stem = config_path.stem
    report_dir = Path(cfg.report_dir)
    report_dir.mkdir(parents=True, exist_ok=True)
    models = result["models"]
    clean = next(m for m in models if m["label"] == "clean")
    # Table 6: clean, the ResNet-18 poisons and baselines, the protect path; Table 7: surrogates at 8/255
    t6 = [m for m in models if not (m.get("run", {}).get("objective") == "alignment"
                                    and m["run"].get("surrogate") != "resnet18")]
    t7 = [clean] + [m for m in models if m.get("run", {}).get("objective") == "alignment"
                    and m["run"].get("eps") == 8.0]
    paper = ["| Setting | Paper top-1 (ResNet-18 victim, CelebA) | Ours top-1 |", "|---|---|---|"]
    for m in [clean] + [m for m in models if m.get("run", {}).get("objective") == "alignment"]:
        r = m.get("run", {})
        ref = PAPER_TOP1["clean"] if m is clean else (
            PAPER_R50_TOP1_8 if r.get("surrogate") == "resnet50" and r.get("eps") == 8.0 else
            PAPER_TOP1.get(r.get("eps")) if r.get("surrogate") == "resnet18" else None)
        ours = _top1(m)
        paper.append(f"| {m['label']} | {ref if ref is not None else '–'} | "
                     f"{'–' if ours is None else f'{100 * ours:.1f}'} |")
    stem_name = stem if stem.startswith("faces") else f"faces_{stem}"
    roc_name, fig_name = f"{stem_name}_roc.png", f"{stem_name}_faces.png"
    shutil.copyfile(roc, report_dir / roc_name)
    if figure is not None:
        shutil.copyfile(figure, report_dir / fig_name)
    timings = "\n".join(f"| {k} | {'reused from an earlier identical run' if v is None else f'{v:.0f}'} |"
                         for k, v in result["timings_s"].items())
    rel = result["release"]
    md = f"""# Face experiment `{cfg.name}` (generated by `{result['command']}`; do not edit by hand)

Machine: {result['machine']}. Date: {result['date']}. Code: {result['code_revision']}.

Release set (victims and surrogates train on it): {rel['faces']} faces of {rel['identities']} identities
({rel['celeba_identities']} CelebA-wild, {rel['cfp_identities']} CFP). Held-out identification:
{result['heldout']['identities']} CelebA-wild identities ({result['heldout']['faces']} faces), never trained on.
CFP verification on protocol folds {', '.join(map(str, result['cfp_eval_folds']))} (no release identity in them).
{cfg.notes.strip()}

## Table 6 layout: victims trained on each set (accuracy %, change from clean in points)

{table6(t6)}

## Table 7 layout: surrogate architecture at 8/255

{table6(t7)}

## Beside the paper

The paper trains on a much larger release set with full-size models; ours is {rel['identities']} identities
with the CPU-sized models of the config, so absolute numbers differ; compare the drops.

{chr(10).join(paper)}

## Goals

{chr(10).join('- ' + g for g in goals(models))}

## Verification details

{detail_table(models)}

## Figures

ROC curves of every victim per benchmark: ![ROC]({roc_name})

Clean release faces and their alignment-poisoned versions: ![faces]({fig_name})

## Wall time per stage (seconds, first run of each stage)

| Stage | Seconds |
|---|---|
{timings}

Protocol: {result['protocol']['verification']}. Identification: {result['protocol']['identification']}.
"""
    for name, text in ((f"{stem_name}.md", md), (f"{stem_name}.json", json.dumps(result, indent=2))):
        tmp = report_dir / (name + ".tmp")
        tmp.write_text(text)
        os.replace(tmp, report_dir / name)
