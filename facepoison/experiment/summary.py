"""Victims across seeds and epochs, summarized: one row per released set with the mean and the spread of the
victims' held-out identification (at their last and at their best epoch) and verification, the drop from
the clean victims, the noise level the drops are judged against, and the cost and look of each poison.

A drop counts only when it exceeds the noise: the spread (max − min) of the clean victims' top-1 across
seeds, of the random-noise victims', and how far the random-noise victims' mean is from the clean mean.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import numpy as np


def _top(model: dict, k: str) -> float | None:
    ident = model.get("identification") or {}
    return ident.get(k)


def _verif(model: dict, bench: str) -> float | None:
    v = (model.get("verification") or {}).get(bench)
    return None if v is None else v["accuracy"]


def _stats(values: list[float | None]) -> dict[str, float] | None:
    vals = [v for v in values if v is not None]
    if not vals:
        return None
    return {"mean": float(np.mean(vals)), "min": float(np.min(vals)), "max": float(np.max(vals)), "n": len(vals)}


def aggregate(models: list[dict]) -> list[dict[str, Any]]:
    """One row per released set (``run["set"]``), in order of first appearance.

    Each row: ``set``, ``label``, ``kind``, the run info, and for the last and the best epoch the statistics
    (mean, min, max, n over victim seeds) of top-1, top-5, CFP-FF and CFP-FP, plus the victims' training
    accuracy and final loss.
    """
    groups: dict[str, list[dict]] = defaultdict(list)
    order: list[str] = []
    for m in models:
        name = m.get("run", {}).get("set", m["label"])
        if name not in groups:
            order.append(name)
        groups[name].append(m)
    rows = []
    for name in order:
        ms = groups[name]
        run = dict(ms[0].get("run", {}))
        row: dict[str, Any] = {"set": name, "label": run.get("base_label", ms[0]["label"]), "run": run,
                               "kind": run.get("kind", "clean")}
        for epoch in ("last", "best"):
            sel = [m for m in ms if m.get("run", {}).get("epoch", "last") == epoch] or (
                [m for m in ms if m.get("run", {}).get("epoch", "last") == "last"] if epoch == "best" else [])
            row[epoch] = {"top1": _stats([_top(m, "top1") for m in sel]),
                          "top5": _stats([_top(m, "top5") for m in sel]),
                          "CFP-FF": _stats([_verif(m, "CFP-FF") for m in sel]),
                          "CFP-FP": _stats([_verif(m, "CFP-FP") for m in sel]),
                          "seeds": sorted({m.get("run", {}).get("seed", 0) for m in sel})}
        lasts = [m for m in ms if m.get("run", {}).get("epoch", "last") == "last"]
        row["train_accuracy"] = _stats([m.get("train", {}).get("train_accuracy") for m in lasts])
        row["final_loss"] = _stats([m.get("train", {}).get("final_loss") for m in lasts])
        rows.append(row)
    return rows


def noise_level(rows: list[dict]) -> float:
    """Top-1 noise in points: the largest seed spread of the clean and random-noise victims (last and best
    epoch), and the largest distance of a random-noise mean from the clean mean."""
    clean = next((r for r in rows if r["kind"] == "clean"), None)
    spreads = []
    for r in rows:
        if r["kind"] not in ("clean", "poison") or (r["kind"] == "poison" and r["run"].get("objective") != "random"):
            continue
        for epoch in ("last", "best"):
            s = r[epoch]["top1"]
            if s is not None:
                spreads.append(100 * (s["max"] - s["min"]))
                if r is not clean and clean is not None and clean[epoch]["top1"] is not None:
                    spreads.append(100 * abs(s["mean"] - clean[epoch]["top1"]["mean"]))
    return max(spreads, default=0.0)


def drops(rows: list[dict]) -> dict[str, dict[str, float | None]]:
    """Per set, the drop of mean top-1 (points) from the clean victims at the last and the best epoch, and the
    CFP-FF drop at the last epoch."""
    clean = next((r for r in rows if r["kind"] == "clean"), None)
    out = {}
    for r in rows:
        d: dict[str, float | None] = {}
        for epoch in ("last", "best"):
            a, c = r[epoch]["top1"], clean[epoch]["top1"] if clean else None
            d[epoch] = None if a is None or c is None else 100 * (c["mean"] - a["mean"])
        a, c = r["last"]["CFP-FF"], clean["last"]["CFP-FF"] if clean else None
        d["CFP-FF"] = None if a is None or c is None else 100 * (c["mean"] - a["mean"])
        out[r["set"]] = d
    return out


def _cell(s: dict | None, ref: dict | None = None) -> str:
    if s is None:
        return "–"
    text = f"{100 * s['mean']:.1f}"
    if s["n"] > 1:
        text += f" [{100 * s['min']:.1f}–{100 * s['max']:.1f}]"
    if ref is not None:
        text += f" ({100 * (s['mean'] - ref['mean']):+.1f})"
    return text


def objectives_table(rows: list[dict], extras: dict[str, dict]) -> str:
    """Markdown: per set, top-1/top-5 at the last and best epoch and CFP-FF/FP (mean [min–max] over seeds, change
    from clean), then the crafting cost and the poisoned faces' quality (``extras[set]``: steps,
    s_per_1k, ssim, psnr, ciede2000) and the victims' training accuracy and final loss."""
    clean = next((r for r in rows if r["kind"] == "clean"), None)
    head = ["Set", "seeds", "top-1 last", "top-1 best", "top-5 last", "top-5 best", "CFP-FF", "CFP-FP", "steps",
            "craft s/1k faces", "SSIM", "PSNR dB", "ΔE2000", "victim train acc", "victim final loss"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        ref = clean if r is not clean else None
        e = extras.get(r["set"], {})

        def fmt(key: str, spec: str, e: dict = e) -> str:
            v = e.get(key)
            return "–" if v is None else format(v, spec)

        def cell(epoch: str, what: str, r: dict = r, ref: dict | None = ref) -> str:
            return _cell(r[epoch][what], ref and ref[epoch][what])

        acc, loss = r["train_accuracy"], r["final_loss"]
        lines.append("| " + " | ".join([
            r["label"], str(len(r["last"]["seeds"])),
            cell("last", "top1"), cell("best", "top1"), cell("last", "top5"), cell("best", "top5"),
            cell("last", "CFP-FF"), cell("last", "CFP-FP"),
            str(e.get("steps", "–")), fmt("s_per_1k", ".0f"), fmt("ssim", ".3f"), fmt("psnr", ".1f"),
            fmt("ciede2000", ".2f"),
            "–" if acc is None else f"{100 * acc['mean']:.1f}", "–" if loss is None else f"{loss['mean']:.2f}",
        ]) + " |")
    return "\n".join(lines)


def face_goals(rows: list[dict]) -> list[str]:
    """The face-efficacy goals (best-epoch mean drops, CFP-FF at 16/255, the protect path, random noise)."""
    noise = noise_level(rows)
    d = drops(rows)
    out = [f"Noise level: {noise:.1f} top-1 points (largest seed spread of the clean and random-noise victims, "
           f"and largest distance of a random-noise mean from clean); a drop within it does not count."]
    poisons = [r for r in rows if r["kind"] == "poison" and r["run"].get("objective") != "random"]
    for eps, need in ((8.0, 15.0), (16.0, 25.0)):
        cands = [(d[r["set"]]["best"], r) for r in poisons if r["run"].get("eps") == eps
                 and d[r["set"]]["best"] is not None]
        if cands:
            best_drop, best = max(cands, key=lambda t: t[0])
            ok = best_drop >= need and best_drop > noise
            out.append(f"{eps:g}/255: best objective {best['label']}: top-1 drop at the victims' best epoch "
                       f"{best_drop:.1f} points (goal ≥ {need:g}) → {'met' if ok else 'NOT met'}")
            if eps == 16.0 and d[best["set"]]["CFP-FF"] is not None:
                ff = d[best["set"]]["CFP-FF"]
                out.append(f"16/255: CFP-FF drop of {best['label']}: {ff:.1f} points (goal ≥ 8) → "
                           f"{'met' if ff >= 8 else 'NOT met'}")
    for r in rows:
        if r["kind"] == "protect" and d[r["set"]]["best"] is not None:
            v = d[r["set"]]["best"]
            out.append(f"{r['label']}: top-1 drop at the best epoch {v:.1f} points (goal ≥ 10) → "
                       f"{'met' if v >= 10 and v > noise else 'NOT met'}")
    for r in rows:
        if r["kind"] == "poison" and r["run"].get("objective") == "random" and d[r["set"]]["best"] is not None:
            s = r["best"]["top1"]
            c = next(x for x in rows if x["kind"] == "clean")["best"]["top1"]
            spread = 100 * max(s["max"] - s["min"], c["max"] - c["min"])
            v = d[r["set"]]["best"]
            out.append(f"{r['label']}: best-epoch top-1 drop {v:+.1f} points vs a seed spread of {spread:.1f} → "
                       f"{'within (harness sane)' if abs(v) <= max(spread, 1.0) else 'OUTSIDE the spread'}")
    return out
