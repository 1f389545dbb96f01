"""Reports of face evaluations: the seed paper's Table 6 layout (identification top-1/top-5, then one
verification accuracy per benchmark), several models side by side with the drop from the first (clean)
one, and ROC curves.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from eval.benchmarks import BENCHMARK_NAMES


def benchmark_columns(reports: Sequence[dict]) -> list[str]:
    """Verification benchmarks present in any report, in the paper's order (others after, sorted)."""
    names = {b for r in reports for b in r.get("verification", {})}
    return [b for b in BENCHMARK_NAMES if b in names] + sorted(names - set(BENCHMARK_NAMES))


def _cell(value: float | None, ref: float | None, std: float | None = None) -> str:
    if value is None:
        return "–"
    text = f"{100 * value:.1f}"
    if std is not None:
        text += f" ± {100 * std:.1f}"
    if ref is not None:
        text += f" ({100 * (value - ref):+.1f})"
    return text


def accuracy_table(reports: Sequence[dict], ident_name: str = "held-out") -> str:
    """Markdown table: one row per model (its ``label``), values in %, the drop from row 0 in brackets."""
    benches = benchmark_columns(reports)
    has_ident = any(r.get("identification") for r in reports)
    head = ["Model"] + ([f"{ident_name} top-1", f"{ident_name} top-5"] if has_ident else []) + benches
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    ref = reports[0]
    for k, r in enumerate(reports):
        row = [r["label"]]
        if has_ident:
            for key in ("top1", "top5"):
                v = (r.get("identification") or {}).get(key)
                rv = (ref.get("identification") or {}).get(key) if k else None
                row.append(_cell(v, rv))
        for b in benches:
            res = r.get("verification", {}).get(b)
            rv = ref.get("verification", {}).get(b, {}).get("accuracy") if k else None
            row.append(_cell(res["accuracy"] if res else None, rv, res["std"] if res else None))
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def detail_table(reports: Sequence[dict]) -> str:
    """AUC, TAR@FAR=1e-3, pairs and undetected images per model and benchmark."""
    lines = ["| Model | Benchmark | Accuracy | AUC | TAR@FAR=1e-3 | Pairs | Undetected images |",
             "|---|---|---|---|---|---|---|"]
    for r in reports:
        for b in benchmark_columns([r]):
            v = r["verification"][b]
            lines.append(f"| {r['label']} | {b} | {100 * v['accuracy']:.2f} ± {100 * v['std']:.2f} | "
                         f"{v['auc']:.4f} | {v['tar_at_far_1e-3']:.4f} | {v['pairs']} | {v.get('undetected', 0)} |")
    return "\n".join(lines)


def plot_roc(curves: dict[str, dict[str, tuple[np.ndarray, np.ndarray, float]]], path: str | Path) -> None:
    """One panel per benchmark, one curve per model: ``curves[bench][label] = (fpr, tpr, auc)``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = max(1, len(curves))
    fig, axes = plt.subplots(1, n, figsize=(4.2 * n, 4), squeeze=False)
    for ax, (bench, by_model) in zip(axes[0], curves.items(), strict=False):
        for label, (fpr, tpr, auc) in by_model.items():
            ax.plot(np.maximum(fpr, 1e-4), tpr, label=f"{label} (AUC {auc:.3f})")
        ax.set_xscale("log")
        ax.set_xlim(1e-4, 1)
        ax.set_ylim(0, 1.01)
        ax.set_xlabel("false accept rate")
        ax.set_ylabel("true accept rate")
        ax.set_title(bench)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
    if not curves:
        axes[0][0].text(0.5, 0.5, "no verification benchmark", ha="center")
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=110)
    plt.close(fig)
