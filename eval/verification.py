"""10-fold pair verification on embeddings (pure numpy; the LFW/insightface protocol).

For each fold, the threshold that maximises accuracy on the other nine folds is applied to the held-out
fold; the report is the mean ± std of the ten fold accuracies, plus ROC AUC and TAR at FAR = 1e-3 over all
pairs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.metrics import roc_auc_score, roc_curve


def pair_scores(emb1: np.ndarray, emb2: np.ndarray) -> np.ndarray:
    """Cosine similarity of each pair of rows."""
    a = emb1 / np.maximum(np.linalg.norm(emb1, axis=1, keepdims=True), 1e-12)
    b = emb2 / np.maximum(np.linalg.norm(emb2, axis=1, keepdims=True), 1e-12)
    return (a * b).sum(axis=1)


def best_threshold(scores: np.ndarray, same: np.ndarray) -> tuple[float, float]:
    """(threshold, accuracy) maximising accuracy of ``score > threshold ⇔ same``, over all distinct cuts."""
    order = np.argsort(scores, kind="stable")
    s, y = scores[order], same[order].astype(bool)
    n = len(s)
    # cut after position i: predictions "different" for s[:i+1], "same" for the rest
    neg_below = np.concatenate([[0], np.cumsum(~y)])  # correct "different" answers below the cut
    pos_above = np.concatenate([[y.sum()], y.sum() - np.cumsum(y)])  # correct "same" answers above it
    correct = neg_below + pos_above
    # a cut is valid only between distinct scores
    valid = np.concatenate([[True], s[1:] != s[:-1], [True]])
    correct = np.where(valid, correct, -1)
    i = int(np.argmax(correct))
    if i == 0:
        thr = s[0] - 1e-6
    elif i == n:
        thr = s[-1] + 1e-6
    else:
        thr = (s[i - 1] + s[i]) / 2
    return float(thr), float(correct[i] / n)


@dataclass
class VerificationResult:
    accuracy: float
    std: float
    auc: float
    tar_at_far_1e3: float
    pairs: int
    fold_accuracies: list[float]
    thresholds: list[float]

    def as_dict(self) -> dict:
        return {"accuracy": self.accuracy, "std": self.std, "auc": self.auc,
                "tar_at_far_1e-3": self.tar_at_far_1e3, "pairs": self.pairs}


def verify(scores: np.ndarray, same: np.ndarray, folds: np.ndarray | int = 10) -> VerificationResult:
    """k-fold verification accuracy with the threshold chosen on the other folds.

    Args:
        scores: similarity per pair (higher = more alike).
        same: 1 for same-person pairs.
        folds: fold index per pair, or a number of contiguous folds (LFW's pairs.txt order).
    """
    scores, same = np.asarray(scores, np.float64), np.asarray(same).astype(bool)
    if isinstance(folds, int):
        folds = np.arange(len(scores)) * folds // max(1, len(scores))
    folds = np.asarray(folds)
    if len(np.unique(folds)) < 2:
        raise ValueError("verification needs pairs in at least 2 folds (the threshold is chosen on the others)")
    accs, thrs = [], []
    for f in np.unique(folds):
        test = folds == f
        thr, _ = best_threshold(scores[~test], same[~test])
        accs.append(float(((scores[test] > thr) == same[test]).mean()))
        thrs.append(thr)
    fpr, tpr, _ = roc_curve(same, scores)
    tar = float(np.interp(1e-3, fpr, tpr)) if fpr.size else float("nan")
    return VerificationResult(float(np.mean(accs)), float(np.std(accs)), float(roc_auc_score(same, scores)), tar,
                              len(scores), accs, thrs)
