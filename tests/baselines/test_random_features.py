"""Random-feature baselines: Table 1 "Rand. LP" and Table 2 "Rand. FS" (1-NN)."""

from __future__ import annotations

import numpy as np
import pytest

from mrl.baselines import rand_fs_1nn, rand_lp, random_feature_indices
from mrl.core.errors import MRLError
from mrl.eval.probe import linear_probe


def test_random_feature_indices_seeded_sorted_distinct_nested():
    a = random_feature_indices(2048, 64, seed=3)
    assert a.dtype == np.int64 and a.shape == (64,)
    np.testing.assert_array_equal(a, random_feature_indices(2048, 64, seed=3))  # reproducible
    assert np.all(np.diff(a) > 0)  # sorted and distinct
    assert a.min() >= 0 and a.max() < 2048
    assert not np.array_equal(a, random_feature_indices(2048, 64, seed=4))
    assert not np.array_equal(a, np.arange(64))  # not simply the first features
    assert set(random_feature_indices(2048, 16, seed=3)) <= set(a)  # nested in k
    np.testing.assert_array_equal(random_feature_indices(10, 10, seed=0), np.arange(10))


def test_random_feature_indices_are_uniform():
    counts = np.zeros(20)
    for seed in range(400):
        counts[random_feature_indices(20, 5, seed)] += 1
    assert counts.sum() == 2000 and counts.min() > 60 and counts.max() < 140  # ~100 each


@pytest.mark.parametrize(
    ("args", "match"),
    [
        ((10, 11, 0), "k=11 random features cannot be chosen from d=10"),
        ((0, 1, 0), "d=0 must be a positive integer"),
        ((10, 0, 0), "k=0 must be a positive integer"),
        ((10, 2, -1), "seed=-1 must be an integer >= 0"),
        ((10, 2.5, 0), "k=2.5"),
    ],
)
def test_random_feature_indices_bad_input(args, match):
    with pytest.raises(MRLError, match=match):
        random_feature_indices(*args)


def test_rand_lp_on_fashion_mnist_pixels(fmnist_pixels):
    train_x, train_y, test_x, test_y = fmnist_pixels
    dims = [4, 16, 64, 784, 1024]
    acc = rand_lp(train_x, train_y, test_x, test_y, dims, num_classes=10, seed=0, epochs=15)
    assert list(acc) == dims and acc[1024] is None  # more features than the width: missing
    assert all(0.0 <= acc[k] <= 1.0 for k in dims[:-1])
    assert acc[4] > 0.2  # chance is 0.1
    assert acc[4] < acc[64] < acc[784] + 0.02  # grows with k (roughly)
    assert acc[784] > 0.75
    # reproducible, and k random features = a probe on exactly those columns
    assert rand_lp(train_x, train_y, test_x, test_y, dims, 10, seed=0, epochs=15) == acc
    cols = random_feature_indices(784, 16, seed=0)
    alone = linear_probe(train_x[:, cols], train_y, test_x[:, cols], test_y, [16], 10, epochs=15)
    assert abs(alone["probe/top1@d16"] - acc[16]) < 0.03


def test_rand_lp_bad_input(fmnist_pixels):
    train_x, train_y, test_x, test_y = fmnist_pixels
    with pytest.raises(MRLError, match="test_x has width 10"):
        rand_lp(train_x, train_y, test_x[:, :10], test_y, [4], 10)
    with pytest.raises(MRLError, match="seed=-2"):
        rand_lp(train_x, train_y, test_x, test_y, [4], 10, seed=-2)
    with pytest.raises(MRLError, match="train_y has shape"):
        rand_lp(train_x, train_y[:5], test_x, test_y, [4], 10)
    with pytest.raises(MRLError, match="strictly increasing"):
        rand_lp(train_x, train_y, test_x, test_y, [8, 4], 10)


def test_rand_fs_1nn_is_truncated_ff_max(fmnist_pixels):
    train_x, train_y, test_x, test_y = fmnist_pixels
    acc = rand_fs_1nn(train_x, train_y, test_x, test_y, [16, 200, 784, 2048])
    assert acc[2048] is None
    assert all(0.0 <= acc[k] <= 1.0 for k in (16, 200, 784))
    assert acc[784] > 0.7 and acc[784] > acc[16]  # first 16 pixels are an image corner
    # by hand: cosine 1-NN on the first k features
    for k in (16, 200):
        a = train_x[:, :k] / np.maximum(
            np.linalg.norm(train_x[:, :k], axis=1, keepdims=True), 1e-12
        )
        b = test_x[:, :k] / np.maximum(np.linalg.norm(test_x[:, :k], axis=1, keepdims=True), 1e-12)
        pred = train_y[np.argmax(b @ a.T, axis=1)]
        assert abs(float(np.mean(pred == test_y)) - acc[k]) <= 0.005  # FAISS vs numpy ties
