"""Funnel retrieval (mrl.eval.funnel): every shortlist index against numpy brute force, the
rerank against exact full-width search, the content-keyed index cache, one-line errors."""

import numpy as np
import pytest
import torch

from mrl.core.errors import MRLError
from mrl.eval import funnel as fm
from mrl.eval import search
from mrl.eval.funnel import Funnel, Stage, check_funnel, content_key


def normed(x: np.ndarray, d: int) -> np.ndarray:
    p = x[:, :d].astype(np.float64)
    return p / np.maximum(np.linalg.norm(p, axis=1, keepdims=True), 1e-12)


def brute_top(db: np.ndarray, q: np.ndarray, d: int, k: int) -> np.ndarray:
    """Top-k ids by cosine of the sliced-then-normalised prefixes (numpy, float64)."""
    return np.argsort(-(normed(q, d) @ normed(db, d).T), axis=1, kind="stable")[:, :k]


def hamming_top(db: np.ndarray, q: np.ndarray, d: int, k: int) -> np.ndarray:
    """Top-k ids by Hamming distance of the sign bits of the prefix (numpy loop reference)."""
    bd, bq = db[:, :d] > 0, q[:, :d] > 0
    dist = np.array([(bd != row).sum(1) for row in bq])
    return np.argsort(dist, axis=1, kind="stable")[:, :k]


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    """Share of the true ids present in each query's found ids."""
    return float(
        np.mean([len(set(t) & set(f)) / len(t) for f, t in zip(found, truth, strict=True)])
    )


@pytest.fixture(scope="module")
def data(make_data):
    db, _, q, _ = make_data(n_classes=10, per_class_train=200, per_class_test=10, width=64, seed=5)
    return db, q  # 2000 x 64 database, 100 queries


SHORTLISTS = [
    # (stage, reference, minimum recall of the true top-10 in the 50-long shortlist)
    (dict(dim=16), "float", 1.0),
    (dict(dim=32, precision="float16"), "float", 1.0),
    (dict(dim=32, precision="int8"), "float", 0.97),
    (dict(dim=64, precision="binary"), "hamming", 0.97),
    (dict(dim=16, index="hnsw", hnsw_m=16), "float", 0.97),
    (dict(dim=32, index="hnsw", precision="int8"), "float", 0.95),
    (dict(dim=64, index="hnsw", precision="binary"), "hamming", 0.9),
    (dict(dim=32, index="ivf", d_c=8, nlist=20, nprobe=8), "float", 0.95),
    (dict(dim=32, index="ivf", precision="int8", nlist=20, nprobe=8), "float", 0.93),
    (dict(dim=32, index="ivfpq", d_c=16, nlist=10, nprobe=5, pq_m=8), "float", 0.8),
    (dict(dim=32, index="opq", nlist=10, nprobe=5, pq_m=8), "float", 0.8),
]


@pytest.mark.parametrize("spec,ref,min_recall", SHORTLISTS, ids=lambda v: str(v))
def test_shortlist_recall_vs_brute_force(data, spec, ref, min_recall):
    db, q = data
    f = Funnel([{**spec, "keep": 50}, (64, 10)], k=10).build(db)
    ids = f.shortlist(q)
    assert ids.shape == (100, 50) and ids.min() >= 0 and ids.max() < len(db)
    truth = (hamming_top if ref == "hamming" else brute_top)(db, q, spec["dim"], 10)
    assert recall(ids, truth) >= min_recall, f.describe()


def test_adanns_ivf_clusters_on_dc_and_scans_at_ds(data):
    """AdANNS-IVF: lists from the d_c prefix, scan at d_s, against a numpy reading of the
    same centroids; with nprobe = nlist it is exact search at d_s."""
    db, q = data
    d_c, d_s, nlist, nprobe, keep = 8, 32, 20, 3, 30
    f = Funnel(
        [dict(dim=d_s, keep=keep, index="ivf", d_c=d_c, nlist=nlist, nprobe=nprobe), (64, 10)]
    )
    f.build(db)
    centroids = f.first.indexes["coarse"].reconstruct_n(0, nlist)
    lists = np.argmax(normed(db, d_c) @ centroids.T, axis=1)
    probed = np.argsort(-(normed(q, d_c) @ centroids.T), axis=1)[:, :nprobe]
    scores = normed(q, d_s) @ normed(db, d_s).T
    got = f.shortlist(q)
    for i in range(len(q)):
        allowed = np.flatnonzero(np.isin(lists, probed[i]))
        want = allowed[np.argsort(-scores[i, allowed], kind="stable")[:keep]]
        assert set(got[i][got[i] >= 0]) == set(want)
    every = Funnel(
        [dict(dim=d_s, keep=keep, index="ivf", d_c=d_c, nlist=nlist, nprobe=nlist), (64, 10)]
    )
    assert recall(every.build(db).shortlist(q), brute_top(db, q, d_s, keep)) == 1.0


def test_rerank_is_exact_at_full_width(pixels):
    """Real Fashion-MNIST pixels (784-d): a whole-database shortlist reranked at full width is
    exact search; any shortlist comes back as its exact full-width top-k with exact scores."""
    db, q = pixels["train_x"], pixels["test_x"]
    n = len(db)
    whole = Funnel([dict(dim=784, keep=n, precision="int8"), (784, 10)], k=10).build(db)
    np.testing.assert_array_equal(whole.search(q)[1], brute_top(db, q, 784, 10))
    f = Funnel([dict(dim=784, keep=40, precision="binary"), (784, 10)], k=10).build(db)
    short = f.shortlist(q)
    scores, ids = f.search(q)
    exact = normed(q, 784) @ normed(db, 784).T
    for i in range(len(q)):
        want = short[i][np.argsort(-exact[i, short[i]], kind="stable")[:10]]
        np.testing.assert_array_equal(ids[i], want)
        np.testing.assert_allclose(scores[i], exact[i, want], rtol=1e-5, atol=1e-6)


def test_index_cache_keyed_by_content(data, tmp_path):
    db, q = data
    # every list probed, the whole database kept: the answers are exact search at 64
    stages = [dict(dim=32, keep=2000, index="ivf", d_c=8, nlist=10, nprobe=10), (64, 10)]
    first = Funnel(stages).build(db, cache_dir=tmp_path)
    folder = tmp_path / f"funnel-{content_key([db])}"
    assert not first.loaded and len(list(folder.glob("*.faiss"))) == 2
    again = Funnel(stages).build(db, cache_dir=tmp_path)
    assert again.loaded
    np.testing.assert_array_equal(again.search(q)[1], first.search(q)[1])
    # other runtime settings (nprobe, keep) reuse the same built index
    assert Funnel([{**stages[0], "nprobe": 2}, (64, 10)]).build(db, cache_dir=tmp_path).loaded
    # changed embeddings: a new key, a rebuild, the stale folder gone, answers of the new data
    changed = db.copy()
    changed[:5] = changed[-5:, ::-1]
    rebuilt = Funnel(stages).build(changed, cache_dir=tmp_path)
    assert not rebuilt.loaded and not folder.exists()
    assert (tmp_path / f"funnel-{content_key([changed])}").is_dir()
    np.testing.assert_array_equal(rebuilt.search(q)[1], brute_top(changed, q, 64, 10))
    # a damaged index file is rebuilt, not trusted
    for p in (tmp_path / f"funnel-{content_key([changed])}").glob("*.faiss"):
        p.write_bytes(b"garbage")
    assert not Funnel(stages).build(changed, cache_dir=tmp_path).loaded


@pytest.mark.parametrize(
    "stages,match",
    [
        (
            [dict(dim=128, keep=50, index="ivf"), (64, 10)],
            r"dim \(d_s\) 128 exceeds the embedding width 64",
        ),
        (
            [dict(dim=16, keep=50, index="ivf", d_c=65), (64, 10)],
            r"d_c=65 must be an integer in 1\.\.64",
        ),
        ([(16, 5), (64, 5)], r"the last must be >= k=10 \(a shortlist shorter than k"),
        (
            [dict(dim=16, keep=50, index="ivf", nlist=5000), (64, 10)],
            "nlist=5000 exceeds the database size 2000",
        ),
        (
            [dict(dim=16, keep=50, index="ivf", nlist=10, nprobe=11), (64, 10)],
            "nprobe=11 exceeds nlist=10",
        ),
        ([dict(dim=16, keep=50, index="annoy"), (64, 10)], "index='annoy' is not an index type"),
        (
            [dict(dim=16, keep=50, index="ivf", precision="binary"), (64, 10)],
            "precision='binary' is not available",
        ),
        ([dict(dim=12, keep=50, precision="binary"), (64, 10)], "binary codes need dim % 8 == 0"),
        ([dict(dim=16, keep=50, index="ivfpq", pq_m=5), (64, 10)], "pq_m=5 must divide dim=16"),
        ([(16, 50), dict(dim=64, keep=10, index="hnsw")], "must be flat/float32"),
        ([dict(dim=16, keep=50, nprobe=0), (64, 10)], "nprobe=0 must be a positive integer"),
        ([dict(dim=16, keep=50, color=1), (64, 10)], "unknown key 'color'"),
        ([(16, 3000), (64, 10)], "keeps 3000 but the database has 2000 items"),
        ([], "funnel is empty"),
    ],
)
def test_impossible_configs_are_one_line_errors(data, stages, match):
    with pytest.raises(MRLError, match=match) as e:
        Funnel(stages, k=10).build(data[0])
    assert "\n" not in str(e.value)


def test_check_funnel_defaults():
    s = check_funnel([dict(dim=32, keep=100, index="ivfpq"), (64, 10)], 64, 10_000, 10)
    assert s[0] == Stage(dim=32, keep=100, index="ivfpq", d_c=32, nlist=256, pq_m=8)
    assert s[0].prec == "pq" and s[1].prec == "float32"
    opq = check_funnel([dict(dim=32, keep=100, index="opq"), (64, 10)], 64, 10_000, 10)[0]
    assert opq.nlist == 0  # no IVF: an exhaustive PQ scan


def test_bytes_per_vector(data):
    db, _ = data
    f = Funnel([dict(dim=64, keep=50, precision="binary"), (32, 20), (64, 10)]).build(db)
    assert f.bytes_per_vector() == 64 / 8 + 4 * 32 + 4 * 64
    h = Funnel([dict(dim=16, keep=50, index="hnsw", hnsw_m=8), (64, 10)]).build(db)
    assert h.bytes_per_vector() == 4 * 16 + 8 * 8 + 4 * 64


def test_gpu_path_errors_without_gpu(data, monkeypatch):
    db, _ = data
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(search, "faiss_has_gpu", lambda: False)
    with pytest.raises(MRLError, match="search.device=cuda but neither FAISS nor torch sees"):
        Funnel([(16, 50), (64, 10)], device="cuda").build(db)
    # a GPU torch sees but CPU-only FAISS: index stages cannot follow
    monkeypatch.setattr(fm, "search_backend", lambda device: "torch-cuda")
    with pytest.raises(MRLError, match="index=ivf on the GPU needs FAISS GPU"):
        Funnel(
            [dict(dim=16, keep=50, index="ivf", nlist=10, nprobe=4), (64, 10)], device="cuda"
        ).build(db)
    monkeypatch.setattr(fm, "search_backend", lambda device: "faiss-gpu")
    with pytest.raises(MRLError, match="index=hnsw has no FAISS GPU version"):
        Funnel([dict(dim=16, keep=50, index="hnsw"), (64, 10)], device="cuda").build(db)


def test_stores_checked_once_at_build_not_per_search(data, monkeypatch):
    """Funnel.build checks every prefix it stores (shape, NaN/inf); a search then reads only
    the candidates' rows: no scan of a whole store per call (at 1M x 2048 that scan alone
    costs more than the funnel)."""
    from mrl.core import validate

    db, q = data
    stages = [dict(dim=16, keep=50), (32, 20), (64, 10)]
    good = {d: normed(db, d).astype(np.float32) for d in (16, 32, 64)}
    bad = {**good, 64: good[64].copy()}
    bad[64][7, 3] = np.inf
    with pytest.raises(
        MRLError, match=r"64-d prefix holds NaN or infinite values \(first at row 7\)"
    ):
        Funnel(stages).build(prefixes=bad, n=len(db), width=64)
    with pytest.raises(
        MRLError, match=r"the 32-d prefix has shape \(2000, 16\); expected \(2000, 32\)"
    ):
        Funnel(stages).build(prefixes={**good, 32: good[16]}, n=len(db), width=64)
    f = Funnel(stages).build(prefixes=good, n=len(db), width=64)
    scanned = []
    real = validate._first_non_finite_row

    def counting(x):
        scanned.append(x.shape)
        return real(x)

    monkeypatch.setattr(validate, "_first_non_finite_row", counting)
    _, ids = f.search(q)
    assert not [s for s in scanned if s[0] == len(db)], scanned  # queries only
    np.testing.assert_array_equal(ids, Funnel(stages).build(db).search(q)[1])
