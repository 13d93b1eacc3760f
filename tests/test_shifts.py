"""The corruption suite of the robustness experiment, on real Fashion-MNIST test images."""

from __future__ import annotations

import numpy as np
import pytest

from mrl.core.errors import MRLError
from mrl.shifts import KINDS, SEVERITIES, corrupt, suite


@pytest.fixture(scope="module")
def images():
    from mrl.data import FashionMNISTDataModule

    ds = FashionMNISTDataModule(val_size=10, test_subset=64).dataset("test")
    return ds.images[ds.indices].numpy()[:, 0]  # (64, 28, 28) uint8


def test_same_seed_same_arrays_other_seed_other_arrays(images):
    a, b = suite(images, seed=0), suite(images, seed=0)
    assert sorted(a) == sorted(f"{k}-{s}" for k in KINDS for s in SEVERITIES)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])
        assert a[key].dtype == np.uint8 and a[key].shape == images.shape
    c = suite(images, seed=1)
    for kind in ("noise", "rotation", "elastic"):  # the random ones
        assert not np.array_equal(a[f"{kind}-2"], c[f"{kind}-2"])
    np.testing.assert_array_equal(a["blur-2"], c["blur-2"])  # deterministic kinds


def test_severity_grows_and_matches_independent_references(images):
    x = images.astype(np.float64)
    change = {
        k: [np.abs(corrupt(images, k, s).astype(np.float64) - x).mean() for s in SEVERITIES]
        for k in KINDS
    }
    for kind, c in change.items():
        assert 0 < c[0] < c[1] < c[2], (kind, c)
    # contrast: v' = mean + f (v - mean) per image, rounded (grey mean, as torchvision)
    f = 0.3
    mean = (x / 255).mean(axis=(1, 2), keepdims=True)
    ref = np.clip(mean + f * (x / 255 - mean), 0, 1) * 255
    assert np.abs(corrupt(images, "contrast", 2).astype(np.float64) - ref).max() <= 1.0
    # rotation by +-35 degrees keeps the image energy roughly (no brightness change)
    rot = corrupt(images, "rotation", 3)
    assert abs(rot.astype(np.float64).sum() / x.sum() - 1) < 0.25


def test_bad_arguments_are_one_line_errors(images):
    with pytest.raises(MRLError, match="kind='fog' is not one of"):
        corrupt(images, "fog", 1)
    with pytest.raises(MRLError, match="severity=4 is not one of"):
        corrupt(images, "noise", 4)
    with pytest.raises(MRLError, match="must be uint8"):
        corrupt(images.astype(np.float32), "noise", 1)
