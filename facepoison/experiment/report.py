"""The face experiment's report: the accuracy tables in the paper's Table 6/7 layouts, the comparison with
the paper, goals judged against the noise, a figure of poisoned faces, and the wall time of every stage."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from eval.report import accuracy_table, detail_table
from facepoison.defenses.table import defense_markdown, defense_table, worst_sentence
from facepoison.experiment.config import ExperimentConfig
from facepoison.experiment.summary import aggregate, face_goals, objectives_table
from recognition.atomic import atomic_path, atomic_write

PAPER_TOP1 = {"clean": 91.0, 8.0: 85.5, 16.0: 61.5}
PAPER_R50_TOP1_8 = 79.5


def poisoned_faces_figure(release, stores: dict, cfg: ExperimentConfig, path: Path) -> Path | None:
    """Clean release faces and their poisoned versions: alignment at its lowest two ε (first surrogate), then each
    other objective at its lowest ε (up to five columns of poisons)."""
    from facepoison.store import load_store

    runs = sorted((r for r, _ in stores.values() if r.objective == "alignment"), key=lambda r: r.eps)
    first = runs[0].surrogate if runs else None
    runs = [r for r in runs if r.surrogate == first][:2]
    for r in sorted((r for r, _ in stores.values() if r.objective not in ("alignment", "random")),
                    key=lambda r: r.eps):
        if all(r.objective != o.objective or r.chroma != o.chroma for o in runs):
            runs.append(r)
    runs = runs[:5]
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
            ax.set_title(f"{r.objective} {r.eps:g}/255" + ("" if r.chroma is None else f" c{r.chroma:g}"), fontsize=6)
        for ax in row:
            ax.axis("off")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
    return path


def _top1(rep: dict) -> float | None:
    ident = rep.get("identification") or {}
    return ident.get("top1")


def goals(models: list[dict]) -> list[str]:
    """The experiment's goals, each stated as met, not met or inconclusive (within the random-noise spread)."""
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
    moved = [abs(d) for d in (drop("random", 8.0), drop("random", 16.0)) if d is not None]
    noise = max(moved, default=0.0)
    if moved:
        out.append(f"Noise level: the random-noise victims moved top-1 by up to {noise:.1f} points from clean; a drop "
                   f"or a difference between drops within that is marked inconclusive.")
    else:
        out.append("Noise level: this run has no random-noise set, so none of the comparisons below is checked "
                   "against one (the victims' seed spread, where there are several seeds, is given above).")

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


def defenses_section(result: dict, cfg: ExperimentConfig) -> str:
    """The Defenses section (empty without ``defenses``): held-out top-1 of each defended victim, the retained
    protection, the worst case per set and over all; the table's data goes into ``result["defenses"]``."""
    if not cfg.defenses:
        return ""
    epoch = "best" if result.get("eval_every") else "last"
    scores: dict[tuple[str, str | None], list[float]] = {}
    for m in result["models"]:
        r = m["run"]
        top1 = _top1(m)
        if r.get("epoch", "last") == epoch and top1 is not None:
            scores.setdefault((r.get("set", m["label"]), r.get("defense")), []).append(top1)
    labels = {m["run"]["set"]: m["run"].get("base_label", m["label"]) for m in result["models"] if "set" in m["run"]}
    table = defense_table(result.get("defended", []), labels, [(d.key, d.label) for d in cfg.defenses],
                          lambda k: sum(scores[k]) / len(scores[k]) if scores.get(k) else None)
    result["defenses"] = table
    return f"""## Defenses: how much protection survives

Held-out top-1 (%) of victims trained with each defense (seed {(result.get('victim_seeds') or [0])[0]}, at their
{epoch} epoch) on the clean set and on each defended poisoned set; "no defense" is the mean over the victim seeds.
The drop is the defended clean victim's top-1 minus the defended poisoned victim's; kept = that drop / the drop
without the defense (the retained protection). One victim per cell: read differences smaller than the noise level
above as noise.

{defense_markdown(table)}

{worst_sentence(table)}

"""


def figures_section(cfg: ExperimentConfig, roc_name: str, fig_name: str) -> str:
    """Links to the ROC curves and the faces figure, or why there are none (``figures: false``)."""
    if not cfg.figures:
        return "Not kept for this report (`figures: false` in its config); the tables above are complete."
    return (f"ROC curves of every victim per benchmark: ![ROC]({roc_name})\n\n"
            f"Clean release faces and their alignment-poisoned versions: ![faces]({fig_name})")


def pending_note(result: dict) -> str:
    """The paragraph that says a report is partial (``--finished-only``) and what it leaves out; empty otherwise."""
    if not result.get("pending"):
        return ""
    return ("\n**Partial report** (`--finished-only`: the stages finished so far, the run goes on or was stopped). "
            "Not finished yet, so left out: " + "; ".join(result["pending"]) + ".\n")


def write_report(result: dict, cfg: ExperimentConfig, config_path: Path, roc: Path, figure: Path | None) -> None:
    """``report_dir/faces_<config>.md`` and ``.json``, with the ROC curves and the faces figure beside them."""

    stem = config_path.stem
    report_dir = Path(cfg.report_dir)
    report_dir.mkdir(parents=True, exist_ok=True)
    # Tables 6 and 7 and the first goals: the first seed's victims at their last epoch, under their set's label
    first_seed = (result.get("victim_seeds") or [0])[0]
    undefended = [m for m in result["models"] if not m["run"].get("defense")]
    models = [{**m, "label": m["run"].get("base_label", m["label"])} for m in undefended
              if m["run"].get("epoch", "last") == "last" and m["run"].get("seed", first_seed) == first_seed]
    rows = aggregate(undefended)
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
    for src, name in ((roc, roc_name), (figure, fig_name)):
        if src is not None and cfg.figures:
            with atomic_path(report_dir / name) as tmp:
                shutil.copyfile(src, tmp)
    timings = "\n".join(f"| {k} | {'reused from an earlier identical run' if v is None else f'{v:.0f}'} |"
                         for k, v in result["timings_s"].items())
    rel = result["release"]
    defenses = defenses_section(result, cfg)
    md = f"""# Face experiment `{cfg.name}` (generated by `{result['command']}`; do not edit by hand)

Machine: {result['machine']}. Date: {result['date']}. Code: {result['code_revision']}.
{pending_note(result)}
Release set (victims and surrogates train on it): {rel['faces']} faces of {rel['identities']} identities
({rel['celeba_identities']} CelebA-wild, {rel['cfp_identities']} CFP). Held-out identification:
{result['heldout']['identities']} CelebA-wild identities ({result['heldout']['faces']} faces), never trained on.
CFP verification on protocol folds {', '.join(map(str, result['cfp_eval_folds']))} (no release identity in them).
{cfg.notes.strip()}

## Every set over victim seeds {', '.join(map(str, result.get('victim_seeds', [0])))}, at the last and the best epoch

Accuracy in %, mean [min–max] over the victim seeds, change of the mean from clean in points. "best" is the
epoch with the highest held-out top-1 (evaluated every {result.get('eval_every') or '–'} epochs): what a scraper
who keeps the best model on a validation set gets, so it is the protection's worst case. Steps (PGD steps, or the
min-min loop's rounds × noise steps per pass), crafting seconds per 1,000 faces (wall time of the crafting stage),
and the mean SSIM, PSNR and CIEDE2000 colour difference of the poisoned faces against the clean
ones ({cfg.quality_faces} faces) are beside each set; the victims' training accuracy (on their own training set)
and final training loss show how well they fit.

{objectives_table(rows, result.get('poison_sets', {}))}

## Face-efficacy goals (mean over victim seeds, best epoch)

{chr(10).join('- ' + g for g in face_goals(rows))}

{defenses}## Table 6 layout: victims on each set, first seed, last epoch (accuracy %, change from clean in points)

{accuracy_table(t6)}

## Table 7 layout: surrogate architecture at 8/255

{accuracy_table(t7)}

## Beside the paper

The paper trains on a much larger release set for far longer; ours is {rel['identities']} identities
with the models and schedules of the config (notes above), so absolute numbers differ; compare the drops.

{chr(10).join(paper)}

## Goals

{chr(10).join('- ' + g for g in goals(models))}

## Verification details

{detail_table(models)}

## Figures

{figures_section(cfg, roc_name, fig_name)}

## Wall time per stage (seconds, first run of each stage)

| Stage | Seconds |
|---|---|
{timings}

Protocol: {result['protocol']['verification']}. Identification: {result['protocol']['identification']}.
"""
    atomic_write(report_dir / f"{stem_name}.md", md)
    atomic_write(report_dir / f"{stem_name}.json", json.dumps(result, indent=2))
