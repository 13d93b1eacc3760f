"""PCA and random-projection baselines at every prefix (fitted on the database only)."""

from __future__ import annotations

import numpy as np
import pytest

from mrl import MRLError
from mrl.eval import KNN, EvalData, Retrieval, build_evaluators, run_evaluators
from mrl.eval.baselines import baseline_transform
from mrl.eval.report import plot_vs_bytes, precision_rows
from mrl.eval.search import prefix_neighbors


def _cos_topk(db: np.ndarray, qs: np.ndarray, k: int) -> np.ndarray:
    """Top-k cosine scores by brute force in float64."""
    n = lambda a: a / np.linalg.norm(a, axis=1, keepdims=True)  # noqa: E731
    return -np.sort(-(n(qs) @ n(db).T), axis=1)[:, :k]


def test_pca_is_fitted_on_the_database_only_and_matches_numpy(clusters):
    train_x, _, test_x, _ = clusters
    tr_a, te_a = baseline_transform("pca", train_x, test_x, 64)
    other = np.concatenate([test_x[:50], 30 * test_x[50:] + 5])  # very different queries
    tr_b, te_b = baseline_transform("pca", train_x, other, 64)
    np.testing.assert_array_equal(tr_a, tr_b)  # the queries did not move the fit
    np.testing.assert_array_equal(te_a[:50], te_b[:50])
    # reference: SVD of the centred database rows; the components' signs do not change
    # inner products, so compare the prefixes' neighbour scores
    x = train_x.astype(np.float64)
    mean = x.mean(0)
    vt = np.linalg.svd(x - mean, full_matrices=False)[2]
    for m in (4, 16, 64):
        ref_db, ref_q = (x - mean) @ vt[:m].T, (test_x - mean) @ vt[:m].T
        got = prefix_neighbors(tr_a, te_a, [m], 5)[m][0]
        np.testing.assert_allclose(got, _cos_topk(ref_db, ref_q, 5), atol=2e-4)
    # at most min(width, n_train) components
    assert baseline_transform("pca", train_x[:20], test_x, 64)[0].shape == (20, 20)


def test_random_projection_is_orthonormal_and_fixed(clusters):
    train_x, _, test_x, _ = clusters
    tr, te = baseline_transform("random_projection", train_x, test_x, 64)
    np.testing.assert_allclose(np.linalg.norm(tr, axis=1), np.linalg.norm(train_x, axis=1), 1e-4)
    tr2, _ = baseline_transform("random_projection", train_x, test_x[:3], 64)
    np.testing.assert_array_equal(tr, tr2)  # fixed seed, data-independent
    assert baseline_transform("random_projection", train_x, test_x, 16)[0].shape == (500, 16)


def test_baseline_keys_rows_and_plot(clusters, tmp_path):
    train_x, train_y, test_x, test_y = clusters
    ev = build_evaluators(
        {
            "precisions": ["float32", "int8"],
            "baselines": ["truncate", "pca", "random_projection"],
            "knn": KNN(),
            "retrieval": Retrieval(ks=(10,)),
        }
    )
    dims = [8, 64]
    metrics, _ = run_evaluators(ev, EvalData(train_x, train_y, test_x, test_y, 5), dims)
    for m in dims:
        for tail in ("", "/int8", "/pca", "/pca/int8", "/random_projection"):
            assert 0 <= metrics[f"knn/top1@d{m}{tail}"] <= 1
            assert 0 <= metrics[f"retrieval/mAP@10@d{m}{tail}"] <= 1
    # a rotation of the full width keeps every cosine: the same 1-NN up to float rounding
    assert abs(metrics["knn/top1@d64/random_projection"] - metrics["knn/top1@d64"]) <= 1 / 200
    rows = precision_rows(metrics, ["knn/top1", "retrieval/mAP@10"], dims)
    assert {(r["method"], r["precision"]) for r in rows} == {
        (b, p) for b in ("truncate", "pca", "random_projection") for p in ("float32", "int8")
    }
    paths = plot_vs_bytes(rows, ["knn/top1", "retrieval/mAP@10"], tmp_path, "t")
    assert [p.name for p in paths] == ["knn_top1_vs_bytes.png", "retrieval_mAP_at10_vs_bytes.png"]
    with pytest.raises(MRLError, match=r"eval.baselines='svd' is not a baseline; use some of"):
        build_evaluators({"baselines": ["svd"], "knn": KNN()})
