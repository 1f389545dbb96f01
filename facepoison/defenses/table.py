"""The Defenses table: how much of each poison's protection survives each defense, and the worst case.

The protection of a poisoned set is the victim's drop from the clean victim (points of top-1 or accuracy). Under
a defense, both the clean and the poisoned victims train with it, so its own cost is not counted as protection:

    retained = (clean_d − poisoned_d) / (clean − poisoned)

where ``_d`` is the score of the victim trained with the defense. 100% means the defense removes nothing, 0% that
it removes the protection entirely (negative: the defended poisoned victim beats the defended clean one). The
worst case of a set is its lowest retained protection over the defenses.

Example:
    >>> scores = {("clean", None): 0.60, ("a8", None): 0.40, ("clean", "jpeg"): 0.58, ("a8", "jpeg"): 0.48}
    >>> t = defense_table(["a8"], {"a8": "alignment 8/255"}, [("jpeg", "jpeg 75")], scores.get)
    >>> round(t["rows"][0]["cells"]["jpeg"]["retained"], 2), t["rows"][0]["worst"]["defense"]
    (0.5, 'jpeg')
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

Score = Callable[[tuple[str, str | None]], float | None]


def retained(clean: float | None, poisoned: float | None, clean_d: float | None,
             poisoned_d: float | None) -> float | None:
    """``(clean_d − poisoned_d) / (clean − poisoned)``; None when a score is missing or the set has no protection
    to retain (its drop without the defense is ≤ 0)."""
    if None in (clean, poisoned, clean_d, poisoned_d) or clean - poisoned <= 0:  # type: ignore[operator]
        return None
    return (clean_d - poisoned_d) / (clean - poisoned)  # type: ignore[operator]


def defense_table(sets: Sequence[str], labels: dict[str, str], defenses: Sequence[tuple[str, str]], score: Score,
                  clean: str = "clean") -> dict[str, Any]:
    """Scores, drops and retained protection per poisoned set and defense.

    Args:
        sets: the poisoned sets (rows), without the clean one.
        labels: report label per set.
        defenses: ``(key, label)`` per defense (columns).
        score: ``score((set, defense key or None))`` → the victim's score in [0, 1], or None if not measured.
        clean: the clean set's name.

    Returns:
        ``{"defenses": [...], "clean": {...}, "rows": [{"set", "label", "score", "drop", "cells": {key: {"score",
        "drop", "retained"}}, "worst": {"defense", "label", "retained"} | None}], "worst": ... over all rows}``.
    """
    names = dict(defenses)
    base = score((clean, None))
    clean_row = {"score": base, "cells": {k: {"score": score((clean, k))} for k, _ in defenses}}
    rows, worst_all = [], None
    for s in sets:
        own = score((s, None))
        cells = {}
        for k, _ in defenses:
            cd, pd = score((clean, k)), score((s, k))
            cells[k] = {"score": pd, "drop": None if cd is None or pd is None else cd - pd,
                        "retained": retained(base, own, cd, pd)}
        kept = [(c["retained"], k) for k, c in cells.items() if c["retained"] is not None]
        worst = None
        if kept:
            r, k = min(kept)
            worst = {"defense": k, "label": names[k], "retained": r}
            if worst_all is None or r < worst_all["retained"]:
                worst_all = {**worst, "set": s, "set_label": labels.get(s, s)}
        rows.append({"set": s, "label": labels.get(s, s), "score": own,
                     "drop": None if base is None or own is None else base - own, "cells": cells, "worst": worst})
    return {"defenses": [{"key": k, "label": lab} for k, lab in defenses], "clean": clean_row, "rows": rows,
            "worst": worst_all}


def _pct(v: float | None, signed: bool = False) -> str:
    return "–" if v is None else (f"{100 * v:+.1f}" if signed else f"{100 * v:.1f}")


def defense_markdown(table: dict[str, Any], what: str = "top-1") -> str:
    """The table as Markdown: the clean row, then each poisoned set; each cell the victim's ``what`` (%) and the
    retained protection; the last column the worst case."""
    defs = table["defenses"]
    head = ["Set", "no defense"] + [d["label"] for d in defs] + ["worst case"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    c = table["clean"]
    lines.append("| clean | " + " | ".join([_pct(c["score"])] + [_pct(c["cells"][d["key"]]["score"]) for d in defs])
                 + " | |")
    for r in table["rows"]:
        cells = [f"{_pct(r['score'])} (drop {_pct(r['drop'])})"]
        for d in defs:
            cell = r["cells"][d["key"]]
            kept = "–" if cell["retained"] is None else f"{100 * cell['retained']:.0f}%"
            cells.append(f"{_pct(cell['score'])} (drop {_pct(cell['drop'])}, kept {kept})")
        w = r["worst"]
        cells.append("–" if w is None else f"{100 * w['retained']:.0f}% ({w['label']})")
        lines.append(f"| {r['label']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def worst_sentence(table: dict[str, Any], what: str = "top-1") -> str:
    """One sentence: the worst case over every set and defense."""
    w = table["worst"]
    if w is None:
        return "No poisoned set had a protection to retain (no drop without a defense), so there is no worst case."
    return (f"Worst case: under {w['label']}, {w['set_label']} keeps {100 * w['retained']:.0f}% of its {what} drop "
            f"(retained protection = drop with the defense / drop without it; both victims trained with the defense).")
