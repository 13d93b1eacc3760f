"""Matryoshka-Adaptor: identity at initialisation, losses, learning on real pixels, persistence."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from mrl import MRLError
from mrl.adaptor import MatryoshkaAdaptor, adaptor_losses, fit_adaptor, load_adaptor
from mrl.core.nesting import truncate
from mrl.data.idx import read_idx
from mrl.eval import KNN, EvalData, build_evaluators, run_evaluators
from mrl.eval.baselines import ADAPTOR_OPTIONS, baseline_transform

FASHION = Path("/usr/share/datasets/fashion-mnist")


def _randomised(adaptor: MatryoshkaAdaptor, seed: int = 1) -> MatryoshkaAdaptor:
    """Non-zero output layer (an untrained adaptor is the identity)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in adaptor.parameters():
            p.copy_(0.3 * torch.randn(p.shape, generator=g))
    return adaptor


def test_untrained_adaptor_is_exactly_the_identity():
    x = np.random.default_rng(0).standard_normal((50, 32)).astype(np.float32)
    ad = MatryoshkaAdaptor(32, hidden=16, dims=[4, 8, 32])
    assert ad.apply(lambda mod: None) is ad  # nn.Module.apply(fn) still works
    assert torch.equal(ad(torch.from_numpy(x)), torch.from_numpy(x))
    out = ad.apply(x, batch_size=7)
    np.testing.assert_array_equal(out, x)
    for m in ad.dims:
        np.testing.assert_array_equal(truncate(out, m, normalize=True), truncate(x, m, True))


def _reference_losses(e, f, dims, weights, k):
    """Plain float64 loops: L1 of cosine differences over pairs i != j / each row's top k."""
    e, f = e.astype(np.float64), f.astype(np.float64)
    n = len(e)

    def cos(a):
        a = a / np.linalg.norm(a, axis=1, keepdims=True)
        return a @ a.T

    ref = cos(e)
    pair = topk = 0.0
    for c, m in zip(weights, dims, strict=True):
        s = cos(f[:, :m])
        p_sum, t_sum = 0.0, 0.0
        for i in range(n):
            others = [j for j in range(n) if j != i]
            p_sum += sum(abs(s[i, j] - ref[i, j]) for j in others)
            near = sorted(others, key=lambda j: -ref[i, j])[:k]
            t_sum += sum(abs(s[i, j] - ref[i, j]) for j in near)
        pair += c * p_sum / (n * (n - 1))
        topk += c * t_sum / (n * k)
    rec = np.mean([np.sum((f[i] - e[i]) ** 2) / np.sum(e[i] ** 2) for i in range(n)])
    return pair, topk, rec


def test_losses_match_a_plain_reference():
    rng = np.random.default_rng(3)
    e = rng.standard_normal((7, 8)).astype(np.float32)
    dims, weights = [2, 4, 8], [1.0, 2.0, 0.5]
    ad = _randomised(MatryoshkaAdaptor(8, hidden=5, dims=dims, weights=weights))
    et = torch.from_numpy(e)
    with torch.no_grad():
        f = ad(et)
        got = adaptor_losses(et, f, dims, weights, k=3)
    pair, topk, rec = _reference_losses(e, f.numpy(), dims, weights, 3)
    assert got["pair"].item() == pytest.approx(pair, rel=1e-5)
    assert got["topk"].item() == pytest.approx(topk, rel=1e-5)
    assert got["rec"].item() == pytest.approx(rec, rel=1e-5)
    assert pair > 0 and topk > 0 and rec > 0  # the reference is not trivially zero
    with torch.no_grad():  # the identity preserves every full-width similarity: zero at width
        zero = adaptor_losses(et, et, [8], k=3)
    assert zero["pair"].item() == pytest.approx(0, abs=1e-6) and zero["rec"].item() == 0


def _top1(db, db_y, qs, qs_y, m):
    """1-NN top-1 of cosine on the first m dims, float64, independent of mrl."""
    n = lambda a: a[:, :m] / np.linalg.norm(a[:, :m], axis=1, keepdims=True)  # noqa: E731
    sims = n(qs.astype(np.float64)) @ n(db.astype(np.float64)).T
    return float((db_y[sims.argmax(1)] == qs_y).mean())


@pytest.fixture(scope="module")
def rotated_fashion():
    """1,000 database + 500 held-out query Fashion-MNIST images (784 pixels in [0, 1]) after one
    fixed random rotation: the information is spread over all dims, so short prefixes are poor."""
    x = read_idx(FASHION / "train-images-idx3-ubyte.gz")[:1500].reshape(-1, 784) / 255.0
    y = read_idx(FASHION / "train-labels-idx1-ubyte.gz")[:1500].astype(np.int64)
    rot = np.linalg.qr(np.random.default_rng(0).standard_normal((784, 784)))[0]
    x = (x @ rot).astype(np.float32)
    return x[:1000], y[:1000], x[1000:], y[1000:]


def test_adaptor_lifts_short_prefixes_of_rotated_pixels(rotated_fashion):
    db, db_y, qs, qs_y = rotated_fashion
    # the database rows only; a few prefixes and a narrow MLP keep it to seconds on one core
    ad = fit_adaptor(db, dims=[8, 16, 32, 64, 128, 784], hidden=256, epochs=40, seed=0, threads=1)
    a_db, a_qs = ad.apply(db), ad.apply(qs)
    trunc = {m: _top1(db, db_y, qs, qs_y, m) for m in (8, 16, 32, 784)}
    adapt = {m: _top1(a_db, db_y, a_qs, qs_y, m) for m in (8, 16, 32, 784)}
    # measured: truncation 0.582 / 0.664 / 0.712 / 0.742, adaptor 0.666 / 0.728 / 0.734 / 0.746
    assert adapt[8] >= trunc[8] + 0.05, (trunc, adapt)
    assert adapt[16] >= trunc[16] + 0.04, (trunc, adapt)
    assert adapt[32] >= trunc[32] + 0.01, (trunc, adapt)
    assert abs(adapt[784] - trunc[784]) <= 0.012, (trunc, adapt)  # full width barely moves


def test_supervised_pairs_teach_the_prefix_which_document_matches():
    """Queries and documents share a signal in the last 8 of 16 dims; the first 8 are
    unrelated noise, so truncation to 8 retrieves at chance and the ranking loss fixes it."""
    rng = np.random.default_rng(0)
    signal = rng.standard_normal((300, 8))

    def view():
        return np.hstack(
            [rng.standard_normal((300, 8)), signal + 0.1 * rng.standard_normal((300, 8))]
        )

    q, d = view().astype(np.float32), view().astype(np.float32)

    def r1(a, b):  # recall@1 of query i -> document i on the first 8 dims, float64
        n = lambda z: z[:, :8] / np.linalg.norm(z[:, :8], axis=1, keepdims=True)  # noqa: E731
        return float(((n(a) @ n(b).T).argmax(1) == np.arange(len(a))).mean())

    kw = dict(dims=[8, 16], hidden=32, epochs=60, batch_size=32, threads=1)
    sup = fit_adaptor(d[:200], pairs=(q[:200], d[:200]), **kw)
    unsup = fit_adaptor(d[:200], **kw)
    assert r1(q[200:], d[200:]) < 0.1  # held-out pairs; measured 0.01 / 0.78 / 0.01
    assert r1(sup.apply(q[200:]), sup.apply(d[200:])) > 0.6
    assert r1(unsup.apply(q[200:]), unsup.apply(d[200:])) < 0.1  # the ranking loss did it


def test_fit_is_deterministic_and_round_trips_through_safetensors(tmp_path, clusters):
    train_x = clusters[0][:200, :16]
    a = fit_adaptor(train_x, dims=[4, 8, 16], hidden=8, epochs=2, seed=5)
    before = torch.get_num_threads()
    b = fit_adaptor(train_x, dims=[4, 8, 16], hidden=8, epochs=2, seed=5, threads=1)
    assert torch.get_num_threads() == before  # restored
    for pa, pb in zip(a.state_dict().values(), b.state_dict().values(), strict=True):
        assert torch.equal(pa, pb)
    assert not torch.equal(a.mlp[2].weight, torch.zeros_like(a.mlp[2].weight))  # it trained
    a.save(tmp_path / "ad")
    assert sorted(p.name for p in (tmp_path / "ad").iterdir()) == [
        "adaptor.json",
        "adaptor.safetensors",
    ]
    loaded = load_adaptor(tmp_path / "ad")
    assert loaded.config() == a.config()
    np.testing.assert_array_equal(loaded.apply(train_x), a.apply(train_x))


class _Boom:
    """Unpickling this writes a marker file: proof that a pickle was loaded."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (Path(self.marker), "loaded"))


def test_a_pickle_beside_or_instead_of_the_weights_is_never_loaded(tmp_path):
    marker = tmp_path / "pickle_was_loaded"
    ad = _randomised(MatryoshkaAdaptor(8, hidden=4, dims=[2, 8]))
    folder = ad.save(tmp_path / "ad")
    for name in ("adaptor.pt", "adaptor.pkl", "pytorch_model.bin"):
        (folder / name).write_bytes(pickle.dumps(_Boom(str(marker))))
    x = np.ones((3, 8), np.float32)
    np.testing.assert_array_equal(load_adaptor(folder).apply(x), ad.apply(x))
    (folder / "adaptor.safetensors").write_bytes(pickle.dumps(_Boom(str(marker))))
    with pytest.raises(MRLError, match=r"adaptor weights .*adaptor.safetensors are unreadable"):
        load_adaptor(folder)
    assert not marker.exists()


@pytest.fixture
def one_thread():
    """One torch thread (the eval path's fits use torch's setting; see fit_adaptor threads)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_adaptor_baseline_keys_match_the_transformed_embeddings(clusters, one_thread):
    train_x, train_y = clusters[0][::3], clusters[1][::3]  # 167 database rows, all 5 classes
    test_x, test_y = clusters[2][:100], clusters[3][:100]
    dims = [8, 16, 64]
    ev = build_evaluators({"baselines": ["truncate", "adaptor"], "knn": KNN()})
    metrics, secs = run_evaluators(ev, EvalData(train_x, train_y, test_x, test_y, 5), dims)
    assert "fit/adaptor" in secs
    # the same evaluator on the adaptor's outputs, fitted with the same options on the
    # database rows only (other queries do not change the database side)
    tr, te = baseline_transform("adaptor", train_x, test_x, 64)
    tr2, _ = baseline_transform("adaptor", train_x, test_x[:5] * 3, 64)
    np.testing.assert_array_equal(tr, tr2)
    ad = fit_adaptor(train_x, **ADAPTOR_OPTIONS)
    np.testing.assert_array_equal(te, ad.apply(test_x))
    plain, _ = run_evaluators(
        build_evaluators({"knn": KNN()}), EvalData(tr, train_y, te, test_y, 5), dims
    )
    for m in dims:
        assert metrics[f"knn/top1@d{m}/adaptor"] == plain[f"knn/top1@d{m}"]


def test_bad_inputs_give_one_line_errors():
    x = np.random.default_rng(0).standard_normal((20, 16)).astype(np.float32)
    cases = [
        (
            lambda: MatryoshkaAdaptor(16, dims=[8, 32]),
            r"adaptor dims=\[8, 32\]: 32 exceeds the embedding width 16",
        ),
        (lambda: fit_adaptor(np.where(np.arange(16) == 3, np.nan, x)), r"fit_adaptor: train_x"),
        (lambda: fit_adaptor(np.zeros((0, 16), np.float32)), r"fit_adaptor: train_x"),
        (lambda: fit_adaptor(x[:1]), r"train_x has 1 row; need at least 2"),
        (lambda: fit_adaptor(x, lr=-1), r"lr=-1 must be a positive number"),
        (lambda: MatryoshkaAdaptor(16, dims=[8, 16]).apply(x[:, :8]), r"adaptor input has width 8"),
        (
            lambda: baseline_transform("pca", x, x, 8, {"epochs": 1}),
            r"baseline 'pca' takes no options",
        ),
        (
            lambda: baseline_transform("adaptor", x, x, 8, {"epoch": 1}),
            r"adaptor option 'epoch' is not one of \[",
        ),
    ]
    for call, pattern in cases:
        with pytest.raises(MRLError, match=pattern) as info:
            call()
        assert "\n" not in str(info.value)


def test_adaptor_options_reach_the_baseline_from_the_eval_config():
    from mrl.eval.registry import build_evaluators

    knn = {"_target_": "mrl.eval.knn.KNN"}
    evs = build_evaluators({"knn": knn, "baselines": ["adaptor"], "adaptor": {"epochs": 3}})
    assert evs["knn"].baseline_options == {"adaptor": {"epochs": 3}}
    with pytest.raises(MRLError, match="eval.adaptor=5 must map adaptor options"):
        build_evaluators({"knn": knn, "baselines": ["adaptor"], "adaptor": 5})
