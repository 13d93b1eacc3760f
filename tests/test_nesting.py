"""truncate, MRLHead and MatryoshkaLoss against explicit reference computations."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mrl import MatryoshkaLoss, MRLError, MRLHead, truncate

DIMS = [2, 4, 8, 16]


def test_truncate_slices_then_normalises():
    z = torch.tensor([[3.0, 4.0, 12.0], [0.0, 0.0, 1.0]])
    assert torch.equal(truncate(z, 2), z[:, :2])
    t = truncate(z, 2, normalize=True)
    torch.testing.assert_close(t[0], torch.tensor([0.6, 0.8]))
    assert torch.equal(t[1], torch.zeros(2))  # a zero slice stays zero, no NaN
    # slicing the normalised full vector is different: the order matters
    full_then_slice = F.normalize(z, dim=-1)[:, :2]
    assert not torch.allclose(full_then_slice[0], t[0])
    assert torch.linalg.norm(t[0]).item() == pytest.approx(1.0)


def test_truncate_numpy_matches_torch():
    z = np.random.default_rng(0).normal(size=(5, 16)).astype(np.float32)
    for m in (1, 4, 16):
        a = truncate(z, m, normalize=True)
        b = truncate(torch.from_numpy(z), m, normalize=True).numpy()
        assert isinstance(a, np.ndarray)
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("m", [0, 17, -1, 2.0, True])
def test_truncate_rejects_bad_m(m):
    with pytest.raises(MRLError, match=r"truncate: m=.* must be an integer in 1..16 \(the width\)"):
        truncate(torch.zeros(2, 16), m)


def test_truncate_acts_on_the_last_axis_of_any_rank():
    """A (batch, tokens, width) array: the prefix and the norm are along the last axis only
    (a reference written with explicit loops over the leading axes)."""
    z = np.random.default_rng(1).normal(size=(2, 3, 16))  # float64 in, float32 out
    for m in (3, 8, 16):
        got_np = truncate(z, m, normalize=True)
        got_t = truncate(torch.from_numpy(z), m, normalize=True).numpy()
        assert got_np.shape == got_t.shape == (2, 3, m) and got_np.dtype == np.float32
        for i in range(2):
            for j in range(3):
                v = z[i, j, :m]
                want = v / np.sqrt(np.sum(v * v))
                np.testing.assert_allclose(got_np[i, j], want, rtol=1e-6)
                np.testing.assert_allclose(got_t[i, j], want, rtol=1e-6)
    with pytest.raises(MRLError, match="1..16"):
        truncate(z, 4 + 16)  # the width is the last axis (16), not the second (3)


def test_nested_sum_refuses_weights_that_do_not_match_the_dims():
    from mrl.core.nesting import nested_sum

    per = {2: torch.tensor(1.0), 4: torch.tensor(10.0)}
    assert nested_sum(per, [2, 4], [1.0, 0.5]).item() == pytest.approx(6.0)
    with pytest.raises(ValueError):
        nested_sum(per, [2, 4], [1.0])


def test_mrl_head_has_one_linear_per_prefix():
    head = MRLHead(DIMS, 5)
    z = torch.randn(3, 16)
    out = head(z)
    assert list(out) == DIMS
    for m, lin in zip(DIMS, head.heads, strict=True):
        assert lin.weight.shape == (5, m)
        torch.testing.assert_close(out[m], z[:, :m] @ lin.weight.T + lin.bias)


def test_mrl_e_uses_first_m_columns_of_shared_weight_and_full_bias():
    torch.manual_seed(0)
    head = MRLHead(DIMS, 5, efficient=True)
    assert sum(p.numel() for p in head.parameters()) == 16 * 5 + 5  # no extra parameters
    W, b = head.shared.weight, head.shared.bias
    z = torch.randn(7, 16)
    out = head(z)
    for m in DIMS:
        expected = z[:, :m] @ W[:, :m].T + b
        torch.testing.assert_close(out[m], expected, rtol=1e-5, atol=1e-5)
    # and the cumulative-sum implementation equals the naive per-prefix loop
    naive = head.forward_naive(z)
    for m in DIMS:
        torch.testing.assert_close(out[m], naive[m], rtol=1e-5, atol=1e-5)
    # changing a column beyond m leaves prefix m unchanged
    with torch.no_grad():
        W[:, 8:] += 1.0
    out2 = head(z)
    torch.testing.assert_close(out2[8], out[8])
    assert not torch.allclose(out2[16], out[16])


def test_mrl_e_gradients_match_naive():
    torch.manual_seed(0)
    head = MRLHead(DIMS, 3, efficient=True)
    z = torch.randn(4, 16)
    y = torch.tensor([0, 1, 2, 1])
    grads = []
    for fwd in (head.forward, head.forward_naive):
        head.zero_grad()
        sum(F.cross_entropy(v, y) for v in fwd(z).values()).backward()
        grads.append(head.shared.weight.grad.clone())
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-5, atol=1e-6)


def test_head_rejects_narrow_embedding_and_bad_classes():
    with pytest.raises(MRLError, match="smaller than max"):
        MRLHead(DIMS, 5)(torch.randn(2, 8))
    with pytest.raises(MRLError, match="num_classes"):
        MRLHead(DIMS, 0)
    with pytest.raises(MRLError, match="duplicate"):
        MRLHead([4, 4], 3)


def test_loss_is_weighted_sum_of_per_prefix_ce():
    torch.manual_seed(0)
    logits = {m: torch.randn(6, 4) for m in DIMS}
    y = torch.randint(0, 4, (6,))
    weights = [2.0, 1.0, 0.5, 1.0]
    loss_fn = MatryoshkaLoss(DIMS, weights, label_smoothing=0.1)
    total, per = loss_fn(logits, y)
    explicit = sum(
        w * F.cross_entropy(logits[m], y, label_smoothing=0.1)
        for w, m in zip(weights, DIMS, strict=True)
    )
    torch.testing.assert_close(total, explicit)
    for m in DIMS:
        torch.testing.assert_close(per[m], F.cross_entropy(logits[m], y, label_smoothing=0.1))
    # default weights: plain sum, not the mean
    total1, _ = MatryoshkaLoss(DIMS)(logits, y)
    torch.testing.assert_close(total1, sum(F.cross_entropy(logits[m], y) for m in DIMS))


def test_loss_validation():
    with pytest.raises(MRLError, match="has 2 values"):
        MatryoshkaLoss(DIMS, [1.0, 1.0])
    with pytest.raises(MRLError, match="label_smoothing"):
        MatryoshkaLoss(DIMS, label_smoothing=1.5)
    with pytest.raises(MRLError, match="lack prefixes"):
        MatryoshkaLoss(DIMS)({2: torch.randn(2, 3)}, torch.tensor([0, 1]))
