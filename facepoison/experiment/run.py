"""Running the face experiment: stages in order, then the evaluation and the report."""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from facepoison.config import DefenseSpec, to_dict
from facepoison.errors import UsageError
from facepoison.evaluation import FaceEvaluation, evaluate_faces, identify
from facepoison.experiment.config import ExperimentConfig, PoisonRun, check_config
from facepoison.experiment.report import poisoned_faces_figure, write_report
from facepoison.experiment.stages import Pending, Stages, key
from facepoison.protect import ProtectSettings
from facepoison.provenance import code_revision
from facepoison.runtime import ProgressFactory, no_progress
from facepoison.training import EpochEval
from recognition.embed import embed_dataset
from recognition.faceset import FaceSet


def heldout_top1(ident: FaceSet, device) -> EpochEval:
    """The epoch evaluation of victims: held-out kNN identification top-1 (the score) and top-5."""

    def evaluate(model, epoch: int) -> dict[str, float]:
        emb = embed_dataset(model, ident, batch_size=128, device=device)
        res = identify(emb, ident.labels.numpy())
        return {"score": res["top1"], "top1": res["top1"], "top5": res["top5"]}

    return evaluate


def crafting_steps(run: PoisonRun, store: Path, cfg: ExperimentConfig) -> dict[str, Any]:
    """What crafting a set took: PGD steps, or the min-min loop's rounds × noise steps (and its surrogate's final
    accuracy on the poisoned set)."""
    from facepoison.objectives import OBJECTIVES

    if not OBJECTIVES.get(run.objective).optimizes:  # drawn, not crafted (random, synthetic_identity)
        return {"steps": 0}
    from facepoison.store import read_attrs

    summary = read_attrs(store).get("min_min")
    if not summary:
        return {"steps": cfg.craft.steps * cfg.craft.restarts}
    mm = json.loads(summary)
    return {"steps": f"{mm['rounds']}×{cfg.min_min.noise_steps}", "min_min_rounds": mm["rounds"],
            "min_min_accuracy": mm["train_accuracy"]}


def run_experiment(cfg: ExperimentConfig, config_path: Path, log: Callable[[str], None] = lambda m: None,
                   progress: ProgressFactory = no_progress, finished_only: bool = False) -> dict[str, Any]:
    """Run (or resume) every stage of ``cfg``, evaluate every victim and write the report.

    With ``finished_only``, no stage runs: the report covers the sets whose stages are all finished (while a long
    run goes on, or after it stopped) and lists the others under ``pending``.

    Returns:
        The report's data: per victim its evaluation (``models``), release and held-out sizes, timings, the
        stages this invocation ran (``stages_run``), machine, date, code revision and command.
    """
    start = time.perf_counter()
    modes = check_config(cfg)  # a bad mode or surrogate name fails before any stage runs
    used = {name for run in cfg.poisons for name in run.surrogates}
    st = Stages(cfg, log, progress, finished_only=finished_only)
    pending: list[str] = []

    def left_out(what: str, stage: object) -> None:
        pending.append(f"{what} (stage {stage} not finished)")
        log(f"{what}: not finished, left out of this report")

    try:
        celeba, cfp = st.prepared()
    except Pending as exc:
        raise UsageError(f"nothing finished to report yet: {exc} is not done") from None
    split = st.split(celeba, cfp)
    if len(split.release) == 0 or not split.celeba_heldout:
        raise UsageError("the identity split leaves no release faces or no held-out identities")
    ids_key = key(split.release.paths, split.release.identities)
    log(f"release: {len(split.release)} faces of {len(split.release.identities)} identities; "
        f"held-out: {len(split.heldout)} faces of {len(split.celeba_heldout)} identities")
    surrogates = {}
    for name, mc in cfg.surrogates.items():
        if name not in used:  # only the surrogates some poison run crafts against
            continue
        train = dataclasses.replace(cfg.surrogate_train, seed=cfg.surrogate_seeds.get(name, cfg.surrogate_train.seed))
        out = st.root / "surrogates" / f"{name}-{key(to_dict(mc), to_dict(train), ids_key)}.pt"
        try:
            surrogates[name] = st.train(f"surrogate {name}", mc, train, split.release, out)
        except Pending as exc:
            left_out(f"surrogate {name}", exc)
    ident = FaceSet(celeba).restrict(split.celeba_heldout)
    victims: list[tuple[str, Path, dict]] = []

    def train_victims(name: str, label: str, info: dict, data, folder: Path, poisons: Path | None = None,
                      stem: str | None = None, defense: DefenseSpec | None = None) -> None:
        """One victim per seed of the set ``name`` (and its best epoch when ``eval_every``), added to ``victims``
        once all of them are there; with a ``defense``, one victim (the first seed), evaluated at its best epoch
        only when ``eval_every``."""
        made = []
        for seed in cfg.victim_seeds if defense is None else cfg.victim_seeds[:1]:
            train = dataclasses.replace(cfg.victim_train, seed=seed)
            vkey = key(to_dict(cfg.victim), to_dict(train), ids_key, *([cfg.eval_every] if cfg.eval_every else []),
                       *([to_dict(defense)] if defense else []))
            tag = f" · seed {seed}" if len(cfg.victim_seeds) > 1 and defense is None else ""
            tag += f" · {defense.label}" if defense else ""
            stem_ = (stem or name) + (f"-{defense.key}" if defense else "")
            out = folder / (f"{stem_}-{vkey}.pt" if poisons is None else f"{stem_}-{key(vkey, poisons.name)}.pt")
            st.train(f"victim {name}{tag}", cfg.victim, train, data, out, poisons=poisons,
                     epoch_eval=heldout_top1(ident, st.device) if cfg.eval_every else None, eval_every=cfg.eval_every,
                     defense=defense)
            base = {**info, "set": name, "base_label": label, "seed": seed,
                    **({"defense": defense.key, "defense_label": defense.label} if defense else {})}
            if defense is None or not cfg.eval_every:
                made.append((label + tag, out, {**base, "epoch": "last"}))
            if cfg.eval_every:
                best = out.with_name(out.stem + ".best.pt")
                made.append((label + tag + " · best", best, {**base, "epoch": "best"}))
        victims.extend(made)

    try:
        train_victims("clean", "clean", {"kind": "clean"}, split.release, st.root / "victims")
    except Pending as exc:
        raise UsageError(f"nothing finished to report yet: {exc} is not done") from None
    stores: dict[str, tuple[PoisonRun, Path]] = {}
    for run in cfg.poisons:  # each set's victims right after its craft: a run stopped mid-way leaves whole sets
        missing = [name for name in run.surrogates if name not in surrogates]
        if missing:  # finished-only, its surrogate not trained
            left_out(run.label, f"surrogate {missing[0]}")
            continue
        sur = [surrogates[name] for name in run.surrogates]
        try:
            store = st.craft(run, sur[0] if sur else None, split.release, f"release:{ids_key}", ensemble=sur[1:])
            train_victims(run.name, run.label, {"kind": "poison", **dataclasses.asdict(run)}, split.release,
                          st.root / "victims", poisons=store)
        except Pending as exc:
            left_out(run.label, exc)
            continue
        stores[run.name] = (run, store)
    defended = [name for name, (run, _) in stores.items() if not cfg.defended or name in cfg.defended]
    for spec in cfg.defenses:  # one more victim per defense on the clean set and on each defended set
        try:
            train_victims("clean", "clean", {"kind": "clean"}, split.release, st.root / "victims", defense=spec)
        except Pending as exc:
            left_out(f"{spec.label} (every set)", exc)
            continue
        for name in defended:
            run, store = stores[name]
            try:
                train_victims(name, run.label, {"kind": "poison", **dataclasses.asdict(run)}, split.release,
                              st.root / "victims", poisons=store, defense=spec)
            except Pending as exc:
                left_out(f"{run.label} under {spec.label}", exc)
    for mode in modes:
        suffix = f" ({mode})" if len(modes) > 1 else ""
        objective = cfg.protect.objective or ProtectSettings().objective
        chroma = ProtectSettings().chroma if cfg.protect.chroma is None else cfg.protect.chroma
        notes = [objective] + ([] if chroma == 1 else [f"chroma {chroma:g}"]) + \
            ([] if cfg.protect.surrogate else ["bundled surrogate"]) + \
            ([f"{mode} identities"] if len(modes) > 1 else [])
        label = "protect" + f" ({', '.join(notes)})"
        try:
            folder, faces = st.protect(split, mode, suffix)
            train_victims(f"protect{suffix}", label, {"kind": "protect", "identities": mode, "faces": len(faces),
                                                       "objective": objective, "chroma": chroma}, faces, folder,
                          stem="victim")
        except Pending as exc:
            left_out(label, exc)
    # 6. evaluation
    own = cfg.stage_dir in (None, cfg.name)  # sharing another experiment's stages: keep its evaluation apart
    eval_dir = st.root / ("eval" if own else f"eval-{cfg.name}")
    # ...but not its cache: embeddings are keyed by checkpoint and face content, so experiments sharing the stages
    # reuse each other's (a victim shared by five reports is embedded once)
    eval_cache = st.root / "eval" / "cache"
    t0 = time.perf_counter()
    evaluation = evaluate_faces(FaceEvaluation(
        models=tuple((label, str(path)) for label, path, _ in victims), out=str(eval_dir), cache=str(eval_cache),
        lfw=cfg.lfw if cfg.lfw and cfg.lfw_pairs else None, lfw_pairs=cfg.lfw_pairs if cfg.lfw else None,
        cfp=cfg.data.cfp_root, cfp_faces=str(cfp), cfp_folds=",".join(str(f) for f in split.eval_folds) or None,
        bins=tuple(cfg.bins.items()), ident=str(celeba), ident_split=str(st.root / "splits" / "celeba_heldout.txt"),
        title=f"Face experiment {cfg.name}: victims", device=None if cfg.device == "auto" else cfg.device,
        command=f"facepoison experiment {config_path} (evaluation stage)"), progress=progress)
    st.timings["evaluate"] = round(time.perf_counter() - t0, 1)
    for (_, path, info), rep in zip(victims, evaluation["models"], strict=True):
        rep["run"] = info
        meta = json.loads(path.with_name(path.name + ".json").read_text())
        rep["train"] = {k: meta.get(k) for k in ("train_accuracy", "final_loss", "best_epoch", "epoch_evals")}
    poison_sets = {}
    for name, (run, store) in stores.items():
        seconds = st.timings.get(f"craft {name}")
        poison_sets[name] = {**st.quality(store, split.release), **crafting_steps(run, store, cfg),
                             "s_per_1k": None if seconds is None else 1000 * seconds / len(split.release)}
    figure = poisoned_faces_figure(split.release, stores, cfg,
                                   st.root / ("poisoned_faces.png" if own else f"poisoned_faces-{cfg.name}.png"))
    result = {
        "config": to_dict(cfg), "config_file": str(config_path), "models": evaluation["models"],
        "protocol": evaluation["protocol"], "release": {"faces": len(split.release),
                                                        "identities": len(split.release.identities),
                                                        "celeba_identities": len(split.celeba_release),
                                                        "cfp_identities": len(split.cfp_release)},
        "heldout": {"identities": len(split.celeba_heldout), "faces": len(split.heldout)},
        "cfp_eval_folds": split.eval_folds, "timings_s": st.timings, "stages_run": st.ran,
        "poison_sets": poison_sets, "victim_seeds": list(cfg.victim_seeds), "eval_every": cfg.eval_every,
        "defended": defended, "pending": pending,
        "total_wall_s_this_invocation": round(time.perf_counter() - start, 1),
        "machine": evaluation["machine"], "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "code_revision": code_revision(), "command": f"facepoison experiment {config_path}",
    }
    write_report(result, cfg, config_path, eval_dir / "roc.png", figure)
    return result
