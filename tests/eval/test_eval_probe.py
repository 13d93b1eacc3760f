import numpy as np
import pytest

from mrl.core.errors import MRLError
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


def test_fused_probes_equal_one_weight_per_prefix(clusters):
    """The masked one-product probes compute the same function as one weight per prefix,
    before and after training, and give the same accuracy."""
    import torch

    from mrl.eval.probe import Probes, _train, _var_mean

    train_x, train_y, test_x, _ = clusters
    x = torch.from_numpy(np.ascontiguousarray(train_x, dtype=np.float32))
    var, mean = _var_mean(x)
    mean, std = mean.float(), var.sqrt().float()
    dims = [4, 16, 64]
    torch.manual_seed(0)
    fused = Probes(dims, 5, mean, std, fused=True)
    torch.manual_seed(0)
    loop = Probes(dims, 5, mean, std, fused=False)
    xt = torch.from_numpy(np.ascontiguousarray(test_x, dtype=np.float32))
    torch.testing.assert_close(fused(xt), loop(xt), rtol=1e-5, atol=1e-5)
    # block m of the fused weight reads only the first m features
    with torch.no_grad():
        bumped = xt.clone()
        bumped[:, 4:] += 100.0
        torch.testing.assert_close(fused(bumped)[:, 0], fused(xt)[:, 0], rtol=1e-5, atol=1e-4)
    args = (x, train_y, mean, std, dims, 5, 3, 3e-2, 1e-5, 0, 64)
    a, b = _train(*args, fused=True), _train(*args, fused=False)
    with torch.no_grad():
        la, lb = a(xt), b(xt)
        assert float((la - lb).abs().max()) < 1e-3
        assert bool((la.argmax(2) == lb.argmax(2)).float().mean() > 0.99)
        assert float(a.weight[:5, 4:].abs().max()) == 0.0  # masked entries never move
