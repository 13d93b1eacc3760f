"""Shared synthetic data for the evaluation tests: small, seeded, learnable."""

from __future__ import annotations

import numpy as np
import pytest


def make_clusters(
    n_classes: int = 5,
    per_class_train: int = 100,
    per_class_test: int = 40,
    width: int = 64,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Gaussian class clusters whose signal decays along the dims (leading dims carry most).

    Class means have per-dim scale ``2 / sqrt(j + 1)`` and unit noise, so every prefix is
    informative and longer prefixes add (less and less) signal, like an MRL embedding.
    """
    rng = np.random.default_rng(seed)
    scale = 2.0 / np.sqrt(np.arange(1, width + 1))
    means = rng.standard_normal((n_classes, width)) * scale

    def draw(per_class: int) -> tuple[np.ndarray, np.ndarray]:
        y = np.repeat(np.arange(n_classes), per_class)
        x = means[y] + rng.standard_normal((len(y), width))
        return x.astype(np.float32), y

    train_x, train_y = draw(per_class_train)
    test_x, test_y = draw(per_class_test)
    return train_x, train_y, test_x, test_y


@pytest.fixture(scope="session")
def clusters() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    return make_clusters()


@pytest.fixture(scope="session")
def make_data():
    """The :func:`make_clusters` factory, for tests that need another size."""
    return make_clusters


@pytest.fixture(scope="module")
def pixels() -> dict[str, np.ndarray]:
    """600 real Fashion-MNIST images as 784-d embeddings (in [0, 1]): 400 train (database),
    200 test (queries)."""
    from mrl.data.fashion_mnist import find_idx_files
    from mrl.data.idx import read_idx

    files = find_idx_files("/usr/share/datasets/fashion-mnist")
    assert files, "Fashion-MNIST IDX files are needed (make data)"
    x = read_idx(files["train_images"])[:600].reshape(600, -1).astype(np.float32) / 255
    y = read_idx(files["train_labels"])[:600].astype(np.int64)
    return dict(train_x=x[:400], train_y=y[:400], test_x=x[400:], test_y=y[400:])
