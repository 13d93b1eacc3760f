import numpy as np
import pytest

from mrl.errors import MRLError
from mrl.eval import linear_probe

FAST = {"epochs": 20, "batch_size": 64, "num_threads": 1}


def test_probe_learnable_monotone_and_deterministic(clusters):
    train_x, train_y, test_x, test_y = clusters
    dims = [4, 16, 64]
    out = linear_probe(train_x, train_y, test_x, test_y, dims, num_classes=5, **FAST)
    assert list(out) == [f"probe/top1@d{m}" for m in dims]
    assert out["probe/top1@d64"] > 0.8  # chance is 0.2
    assert out["probe/top1@d64"] >= out["probe/top1@d16"] - 0.02
    assert out["probe/top1@d16"] >= out["probe/top1@d4"] - 0.02
    assert linear_probe(train_x, train_y, test_x, test_y, dims, 5, **FAST) == out


def test_probe_is_invariant_to_feature_scale(clusters):
    # features are standardised with the train mean/std, so an affine rescaling of each
    # feature leaves the probe unchanged (up to float rounding)
    train_x, train_y, test_x, test_y = clusters
    a, b = np.linspace(0.5, 50, 64, dtype=np.float32), np.float32(3.0)
    base = linear_probe(train_x, train_y, test_x, test_y, [8, 64], 5, **FAST)
    scaled = linear_probe(a * train_x + b, train_y, a * test_x + b, test_y, [8, 64], 5, **FAST)
    for key in base:
        assert scaled[key] == pytest.approx(base[key], abs=0.011)


def test_probe_restores_torch_threads(clusters):
    import torch

    train_x, train_y, test_x, test_y = clusters
    before = torch.get_num_threads()
    linear_probe(train_x, train_y, test_x, test_y, [8], 5, epochs=1, num_threads=1)
    assert torch.get_num_threads() == before


def test_probe_errors(clusters):
    train_x, train_y, test_x, test_y = clusters
    with pytest.raises(MRLError, match="exceeds the embedding width 64"):
        linear_probe(train_x, train_y, test_x, test_y, [8, 128], 5)
    with pytest.raises(MRLError, match="with num_classes=4 they must lie in 0..3"):
        linear_probe(train_x, train_y, test_x, test_y, [8], 4)
    with pytest.raises(MRLError, match="lr=0 must be > 0"):
        linear_probe(train_x, train_y, test_x, test_y, [8], 5, lr=0)
    with pytest.raises(MRLError, match="epochs=0 must be a positive integer"):
        linear_probe(train_x, train_y, test_x, test_y, [8], 5, epochs=0)
    with pytest.raises(MRLError, match="test_x has width 8 but train_x has 64"):
        linear_probe(train_x, train_y, test_x[:, :8], test_y, [8], 5)
    with pytest.raises(MRLError, match="num_threads=0 must be a positive integer"):
        linear_probe(train_x, train_y, test_x, test_y, [8], 5, num_threads=0)
