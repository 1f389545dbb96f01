"""Classification metrics on arrays (no I/O, no models)."""

from __future__ import annotations

import numpy as np


def top1_accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    """Fraction of rows whose arg-max equals the label. Empty input gives NaN."""
    if len(labels) == 0:
        return float("nan")
    return float((np.asarray(logits).argmax(1) == np.asarray(labels)).mean())
