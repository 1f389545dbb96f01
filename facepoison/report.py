"""Pictures for people: a before/after contact sheet of protected faces."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from recognition.atomic import atomic_path


def contact_sheet(items, out_dir: Path, records: dict[str, dict], path: Path, max_faces: int = 6) -> bool:
    """Original and protected version (and the amplified difference) of up to ``max_faces`` protected photos,
    each titled with its L∞ and SSIM. Returns False when no photo was protected."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from facepoison.photos import read_photo

    chosen = [it for it in items if records.get(it.rel, {}).get("status") == "protected"][:max_faces]
    if not chosen:
        return False
    fig, axes = plt.subplots(len(chosen), 3, figsize=(9, 3 * len(chosen)), squeeze=False)
    for row, it in zip(axes, chosen, strict=True):
        rec = records[it.rel]
        before = read_photo(it.source).pixels()
        after = read_photo(out_dir / rec["output"]).pixels()
        diff = after.astype(np.int16) - before.astype(np.int16)
        changed = np.argwhere(np.abs(diff).reshape(diff.shape[0], diff.shape[1], -1).max(-1) > 0)
        if len(changed):  # zoom on the protected region
            (y0, x0), (y1, x1) = changed.min(0), changed.max(0) + 1
            pad = (y1 - y0) // 8
            box = (slice(max(0, y0 - pad), y1 + pad), slice(max(0, x0 - pad), x1 + pad))
            before, after, diff = before[box], after[box], diff[box]
        amplified = np.clip(127.5 + diff * (127.5 / max(1, rec["bound"])), 0, 255).astype(np.uint8)
        cmap = "gray" if before.ndim == 2 else None
        for ax, img, title in zip(row, (before, after, amplified), (
                it.rel, f"protected: L∞ {rec['linf']}/255, SSIM {rec['ssim']:.3f}", "difference, amplified"),
                strict=True):
            ax.imshow(img, cmap=cmap, vmin=0, vmax=255)
            ax.set_title(title, fontsize=8)
            ax.axis("off")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return True
