"""SVD baselines: Table 1 "SVD" (low-rank FF-max classifier) and Table 2 "FF+SVD" (1-NN)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mrl.baselines import ff_svd_1nn, ff_top1, svd_classifier, svd_features, svd_top1
from mrl.core.errors import MRLError
from mrl.eval.knn import knn_metrics
from mrl.eval.search import prefix_neighbors

RANKS = [1, 2, 4, 8, 10, 16, 784]


def test_svd_classifier_shapes_and_rank_limit(ff_classifier):
    w, b = ff_classifier  # 10 x 784: rank at most 10
    out = svd_classifier(w, b, RANKS)
    assert list(out) == RANKS
    for k in (1, 2, 4, 8, 10):
        a, wk = out[k]
        assert a.shape == (k, 784) and wk.shape == (10, k)
        np.testing.assert_allclose(a @ a.T, np.eye(k), atol=1e-10)  # orthonormal rows
    assert out[16] is None and out[784] is None  # k > min(C, d): missing, not invented


def test_svd_classifier_is_the_best_rank_k_approximation(ff_classifier):
    w, b = ff_classifier
    s = np.linalg.svd(w.astype(np.float64), compute_uv=False)
    for k, (a, wk) in svd_classifier(w, b, [1, 3, 5, 10]).items():
        err = np.linalg.norm(w - wk @ a)
        assert err == pytest.approx(np.sqrt(np.sum(s[k:] ** 2)), abs=1e-9)  # Eckart-Young
    a, wk = svd_classifier(w, b, [10])[10]
    np.testing.assert_allclose(wk @ a, w, atol=1e-10)


def test_svd_full_rank_equals_ff_max_exactly(fmnist_pixels, ff_classifier):
    _, _, test_x, test_y = fmnist_pixels
    w, b = ff_classifier
    ff = ff_top1(w, b, test_x, test_y)
    acc = svd_top1(w, b, test_x, test_y, RANKS)
    assert acc[10] == ff  # exactly, at rank min(C, d)
    assert ff > 0.7  # a real classifier (chance 0.1)
    # and FF-max through torch (float32) agrees on this data
    logits = torch.nn.functional.linear(
        torch.from_numpy(test_x), torch.from_numpy(w), torch.from_numpy(b)
    )
    assert float((logits.argmax(1).numpy() == test_y).mean()) == ff
    # beyond rank min(C, d) = 10 the classifier is W itself (the official code's convention)
    assert acc[16] == ff and acc[784] == ff
    assert svd_top1(w, b, test_x, test_y, [8, 785])[785] is None  # wider than d: missing
    assert all(0.0 <= acc[k] <= 1.0 for k in (1, 2, 4, 8, 10))
    assert acc[1] < acc[4] < acc[10]  # accuracy grows with rank
    assert acc[1] > 0.1 or acc[2] > 0.15


def test_svd_top1_matches_manual_low_rank_logits(fmnist_pixels, ff_classifier):
    _, _, test_x, test_y = fmnist_pixels
    w, b = ff_classifier
    for k, (a, wk) in svd_classifier(w, b, [2, 5]).items():
        pred = ((test_x.astype(np.float64) @ a.T) @ wk.T + b).argmax(1)
        assert svd_top1(w, b, test_x, test_y, [k])[k] == float(np.mean(pred == test_y))


def test_svd_accepts_linear_module_and_tensors(fmnist_pixels, ff_classifier):
    _, _, test_x, test_y = fmnist_pixels
    w, b = ff_classifier
    lin = torch.nn.Linear(784, 10)
    with torch.no_grad():
        lin.weight.copy_(torch.from_numpy(w))
        lin.bias.copy_(torch.from_numpy(b))
    ref = svd_top1(w, b, test_x, test_y, [4, 10])
    assert svd_top1(lin, None, torch.from_numpy(test_x), torch.from_numpy(test_y), [4, 10]) == ref


def test_svd_classifier_with_fewer_features_than_classes():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((10, 6))  # d < C: rank limit is d
    out = svd_classifier(w, None, [2, 6, 8])
    assert out[6][0].shape == (6, 6) and out[6][1].shape == (10, 6) and out[8] is None


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"weight": np.zeros(5)}, "expected a non-empty 2-D"),
        ({"bias": np.zeros(3)}, "bias has shape"),
        ({"ranks": [0, 2]}, "not a positive dimension"),
        ({"ranks": [4, 2]}, "strictly increasing"),
        ({"features": np.zeros((4, 7))}, "features have width 7"),
        ({"labels": np.zeros(3, dtype=np.int64)}, "labels has shape"),
        ({"weight": np.full((10, 784), np.nan)}, "NaN"),
    ],
)
def test_svd_top1_bad_input(ff_classifier, fmnist_pixels, kwargs, match):
    w, b = ff_classifier
    _, _, x, y = fmnist_pixels
    args = {"weight": w, "bias": b, "features": x[:4], "labels": y[:4], "ranks": [2]}
    with pytest.raises(MRLError, match=match):
        svd_top1(**{**args, **kwargs})


def test_svd_features_match_numpy_svd_and_are_nested(fmnist_pixels):
    train_x = fmnist_pixels[0]
    fit = svd_features(train_x, [8, 32, 784, 1000])
    assert fit.ranks == {8: True, 32: True, 784: True, 1000: False}
    assert fit.components.shape == (784, 784) and fit.max_rank == 784
    x64 = train_x.astype(np.float64)
    s = np.linalg.svd(x64, compute_uv=False)
    np.testing.assert_allclose(fit.singular_values[:32], s[:32], rtol=1e-6)
    v = fit.components[:32].T  # right singular vectors: X^T X v = s^2 v, orthonormal
    np.testing.assert_allclose(v.T @ v, np.eye(32), atol=1e-8)
    np.testing.assert_allclose(x64.T @ (x64 @ v), v * s[:32] ** 2, rtol=1e-6, atol=1e-6 * s[0] ** 2)
    full = fit(train_x[:50])
    np.testing.assert_allclose(fit.transform(train_x[:50], 8), full[:, :8], rtol=1e-5, atol=1e-5)
    with pytest.raises(MRLError, match="must be an integer in 1..784"):
        fit.transform(train_x[:5], 785)
    with pytest.raises(MRLError, match="width 10"):
        fit.transform(train_x[:5, :10], 8)


def test_svd_features_wide_matrix_uses_direct_svd(fmnist_pixels):
    x = fmnist_pixels[0][:100]  # n=100 < d=784: rank <= 100
    fit = svd_features(x, [10, 100, 200])
    assert fit.max_rank == 100 and fit.ranks == {10: True, 100: True, 200: False}
    s = np.linalg.svd(x.astype(np.float64), compute_uv=False)
    np.testing.assert_allclose(fit.singular_values, s[:100], rtol=1e-8)
    with pytest.raises(MRLError, match="every rank exceeds"):
        svd_features(x, [200])


def test_ff_svd_1nn_on_real_features(fmnist_pixels):
    train_x, train_y, test_x, test_y = fmnist_pixels
    acc = ff_svd_1nn(train_x, train_y, test_x, test_y, [2, 8, 32, 784, 1024])
    assert acc[1024] is None
    assert 0.2 < acc[2] < acc[8] < acc[32]
    # full rank is a rotation of the features: cosine 1-NN is unchanged (up to float ties)
    raw = knn_metrics(prefix_neighbors(train_x, test_x, [784], k=1), train_y, test_y, 10, k=1)
    assert abs(acc[784] - raw["knn/top1@d784"]) <= 0.002
    assert acc[32] > 0.7
