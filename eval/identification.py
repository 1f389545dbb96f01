"""Closed-set identification by k-nearest-neighbour retrieval on embeddings (pure numpy).

Protocol for held-out identities: :func:`gallery_probe_split` puts a deterministic part of each identity's
faces in the gallery and the rest in the probe set; every probe is ranked against the gallery.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def _normalize(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def identity_scores(
    query: np.ndarray, gallery: np.ndarray, gallery_labels: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Cosine similarity of each query to each gallery identity, via that identity's nearest gallery sample.

    Returns:
        (scores ``(n_query, n_identities)``, the identity label of each column).
    """
    sims = _normalize(query) @ _normalize(gallery).T
    gallery_labels = np.asarray(gallery_labels)
    order = np.argsort(gallery_labels, kind="stable")
    identities, starts = np.unique(gallery_labels[order], return_index=True)
    return np.maximum.reduceat(sims[:, order], starts, axis=1), identities


def knn_topk(
    query: np.ndarray, query_labels: np.ndarray, gallery: np.ndarray, gallery_labels: np.ndarray,
    ks: Sequence[int] = (1, 5),
) -> dict[int, float]:
    """Top-k identification accuracy: the true identity is among the first k *distinct* gallery identities,
    ranked by their nearest gallery sample (cosine similarity).

    Args:
        query, gallery: ``(n, d)`` embeddings (normalized here).
        query_labels, gallery_labels: identity labels; every query identity must be in the gallery.
        ks: the k values to report.

    Returns:
        {k: fraction of queries in [0, 1]}.
    """
    scores, identities = identity_scores(query, gallery, gallery_labels)
    query_labels = np.asarray(query_labels)
    missing = set(query_labels.tolist()) - set(identities.tolist())
    if missing:
        raise ValueError(f"{len(missing)} query identities have no gallery sample")
    true_col = np.searchsorted(identities, query_labels)
    true_score = scores[np.arange(len(query_labels)), true_col]
    # rank = number of identities scoring strictly higher (ties counted in the query's favour)
    rank = (scores > true_score[:, None]).sum(axis=1)
    return {k: float((rank < k).mean()) for k in ks}


def gallery_probe_split(labels: np.ndarray, gallery_per_identity: int | None = None, seed: int = 0
                        ) -> tuple[np.ndarray, np.ndarray]:
    """Indices (gallery, probe). Each identity's faces are shuffled with ``seed``; the first
    ``gallery_per_identity`` (default: half, at least one) go to the gallery, the rest are probes."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    gallery, probe = [], []
    for ident in np.unique(labels):
        idx = np.flatnonzero(labels == ident)
        idx = idx[rng.permutation(len(idx))]
        g = gallery_per_identity if gallery_per_identity is not None else max(1, len(idx) // 2)
        gallery.extend(idx[:g].tolist())
        probe.extend(idx[g:].tolist())
    return np.array(sorted(gallery), dtype=np.int64), np.array(sorted(probe), dtype=np.int64)
