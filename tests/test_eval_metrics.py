import numpy as np
import pytest
from sklearn.neighbors import NearestNeighbors

from eval.identification import gallery_probe_split, knn_topk
from eval.verification import best_threshold, verify


def clustered(n_ids=12, per_id=6, dim=8, noise=0.6, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(n_ids, dim))
    labels = np.repeat(np.arange(n_ids), per_id)
    return centers[labels] + noise * rng.normal(size=(len(labels), dim)), labels


def test_top1_equals_sklearn_nearest_neighbour():
    emb, labels = clustered()
    g, p = gallery_probe_split(labels, seed=0)
    norm = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    nn = NearestNeighbors(n_neighbors=1, metric="cosine").fit(norm[g])
    _, idx = nn.kneighbors(norm[p])
    expected = (labels[g][idx[:, 0]] == labels[p]).mean()
    got = knn_topk(emb[p], labels[p], emb[g], labels[g], ks=(1, 5))
    assert got[1] == pytest.approx(expected)
    assert 0 < got[1] <= got[5] <= 1


def test_topk_counts_distinct_identities():
    # gallery: identity 0 has two samples close to the query, identity 1 the true one is third-closest sample
    gallery = np.array([[1.0, 0.0], [0.99, 0.14], [0.95, 0.31], [0.0, 1.0]])
    gl = np.array([0, 0, 1, 2])
    q = np.array([[1.0, 0.05]])
    out = knn_topk(q, np.array([1]), gallery, gl, ks=(1, 2, 3))
    assert out == {1: 0.0, 2: 1.0, 3: 1.0}  # second distinct identity, though third sample


def test_known_answer_and_errors():
    emb, labels = clustered(noise=0.0)
    g, p = gallery_probe_split(labels, gallery_per_identity=1)
    assert knn_topk(emb[p], labels[p], emb[g], labels[g])[1] == 1.0
    assert len(g) == 12 and len(p) == 60 and not set(g) & set(p)
    with pytest.raises(ValueError, match="no gallery sample"):
        knn_topk(emb[:1], np.array([99]), emb[g], labels[g])


def brute_force_threshold(scores, same):
    best = (None, -1)
    for t in np.concatenate([[scores.min() - 1], scores]):
        acc = ((scores > t) == same).mean()
        if acc > best[1]:
            best = (t, acc)
    return best[1]


@pytest.mark.parametrize("seed", range(5))
def test_best_threshold_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    same = rng.random(60) < 0.5
    scores = np.round(rng.normal(size=60) + same * 1.0, 1)  # rounding makes ties
    thr, acc = best_threshold(scores, same)
    assert acc == pytest.approx(brute_force_threshold(scores, same))
    assert ((scores > thr) == same).mean() == pytest.approx(acc)


def test_verify_folds_and_report():
    rng = np.random.default_rng(0)
    same = np.tile([1, 0], 300).astype(bool)
    scores = rng.normal(size=600) + 2.0 * same
    res = verify(scores, same, folds=10)
    assert res.pairs == 600 and len(res.fold_accuracies) == 10
    assert 0.8 < res.accuracy < 0.95 and res.std > 0 and 0.9 < res.auc <= 1 and 0 <= res.tar_at_far_1e3 <= 1
    # each fold's threshold comes from the other nine: perfect separation on those gives 100% here
    perfect = verify(same * 1.0 + rng.normal(size=600) * 0.01, same)
    assert perfect.accuracy == 1.0 and perfect.auc == 1.0
    # the held-out fold never chooses its own threshold
    scores2 = scores.copy()
    scores2[:60] = -scores2[:60]  # fold 0 inverted: its same pairs now fall below the threshold of the others
    res2 = verify(scores2, same)
    assert res2.fold_accuracies[0] < 0.6 and min(res2.fold_accuracies[1:]) > 0.7
