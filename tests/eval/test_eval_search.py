import numpy as np
import pytest

from mrl.core.errors import MRLError
from mrl.eval import exact_search, prefix_neighbors


def slice_then_normalise(x, m):
    """The reference prefix, written independently of ``mrl.core.nesting.truncate``: the first
    m coordinates, each row divided by its own L2 norm (float64; a zero row stays zero)."""
    p = np.asarray(x, dtype=np.float64)[:, :m]
    norms = np.sqrt((p**2).sum(axis=1, keepdims=True))
    return np.divide(p, norms, out=np.zeros_like(p), where=norms > 0)


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def brute_force(db: np.ndarray, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    sims = q.astype(np.float64) @ db.astype(np.float64).T
    idx = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(sims, idx, 1), idx


def test_exact_search_matches_brute_force():
    rng = np.random.default_rng(0)
    db, q = _unit(rng.standard_normal((300, 32))), _unit(rng.standard_normal((50, 32)))
    scores, idx = exact_search(db, q, k=15, query_chunk=7)  # several chunks
    ref_scores, ref_idx = brute_force(db, q, 15)
    np.testing.assert_array_equal(idx, ref_idx)
    np.testing.assert_allclose(scores, ref_scores, atol=1e-5)
    assert scores.dtype == np.float32 and idx.dtype == np.int64 and idx.shape == (50, 15)


def test_exact_search_accepts_float64_and_non_contiguous():
    rng = np.random.default_rng(1)
    db = _unit(rng.standard_normal((40, 8))).astype(np.float64)
    q = np.asfortranarray(_unit(rng.standard_normal((5, 8))))
    _, idx = exact_search(db, q, k=40)
    np.testing.assert_array_equal(idx, brute_force(db, q, 40)[1])


def test_exact_search_orders_ties_by_index():
    db = np.array([[0, 1], [1, 0], [1, 0], [0, 1], [1, 0]], dtype=np.float32)
    scores, idx = exact_search(db, np.array([[1, 0]], dtype=np.float32), k=3)
    np.testing.assert_array_equal(idx, [[1, 2, 4]])
    np.testing.assert_array_equal(scores, [[1, 1, 1]])


def test_prefix_neighbors_slices_then_normalises():
    rng = np.random.default_rng(2)
    train, test = rng.standard_normal((100, 16)), rng.standard_normal((20, 16))
    out = prefix_neighbors(train, test, dims=[4, 8, 16], k=5)
    assert list(out) == [4, 8, 16]
    for m, (scores, idx) in out.items():
        db, q = slice_then_normalise(train, m), slice_then_normalise(test, m)
        ref_scores, ref_idx = brute_force(db, q, 5)
        np.testing.assert_array_equal(idx, ref_idx)
        np.testing.assert_allclose(scores, ref_scores, atol=1e-5)


@pytest.mark.parametrize(
    ("k", "message"),
    [
        (500, "k=500 is larger than the database (300 items); use k <= 300"),
        (0, "k=0 must be a positive integer"),
        (2.5, "k=2.5 must be a positive integer"),
    ],
)
def test_exact_search_bad_k(k, message):
    db = np.ones((300, 4), dtype=np.float32)
    with pytest.raises(MRLError) as err:
        exact_search(db, db[:2], k)
    assert str(err.value) == message


def test_exact_search_errors():
    db = np.ones((10, 4), dtype=np.float32)
    with pytest.raises(MRLError, match="width 3 but the database has width 4"):
        exact_search(db, np.ones((2, 3)), 1)
    with pytest.raises(MRLError, match="expected a non-empty 2-D array"):
        exact_search(db, np.ones(4), 1)
    with pytest.raises(MRLError, match="query_chunk=0"):
        exact_search(db, db, 1, query_chunk=0)
    with pytest.raises(MRLError, match="exceeds the embedding width 4"):
        prefix_neighbors(db, db, dims=[2, 8], k=1)
    with pytest.raises(MRLError, match="test_x has width 3"):
        prefix_neighbors(db, np.ones((2, 3)), dims=[2], k=1)


@pytest.mark.parametrize("width", [8, 256])  # the blocked engine and faiss.knn
def test_exact_search_check_finite(width):
    """NaN/inf in the database is an error by default; check_finite=False (a database
    validated once) skips only that scan and searches the same way."""
    rng = np.random.default_rng(3)
    db = rng.standard_normal((300, width)).astype(np.float32)
    q = rng.standard_normal((5, width)).astype(np.float32)
    for a, b in zip(
        exact_search(db, q, 7), exact_search(db, q, 7, check_finite=False), strict=True
    ):
        np.testing.assert_array_equal(a, b)
    db[11, 0] = np.nan
    with pytest.raises(MRLError, match=r"database holds NaN .* \(first at row 11\)"):
        exact_search(db, q, 7)
    with pytest.raises(MRLError, match="width 3 but the database has width"):
        exact_search(db, q[:, :3], 7, check_finite=False)


def test_use_gpu_without_gpu_is_an_error():
    import faiss

    if hasattr(faiss, "get_num_gpus") and faiss.get_num_gpus() > 0:
        pytest.skip("a GPU is available")
    db = np.ones((10, 4), dtype=np.float32)
    with pytest.raises(MRLError, match="use_gpu=True but FAISS sees no GPU"):
        exact_search(db, db, 1, use_gpu=True)
    exact_search(db, db, 1, use_gpu=None)  # falls back to CPU


@pytest.mark.parametrize("block_bytes", [None, 8 * 7 * 23])  # one block; many small blocks
def test_prefix_neighbors_one_pass_matches_per_prefix_faiss(monkeypatch, block_bytes):
    """The cumulative one-pass search equals a separate FAISS IndexFlatIP search per prefix,
    also when queries and database are split into many blocks and a row is all zeros."""
    import faiss

    from mrl.eval import search

    if block_bytes:
        monkeypatch.setattr(search, "BLOCK_BYTES", block_bytes)
    rng = np.random.default_rng(3)
    train, test = rng.standard_normal((211, 64)), rng.standard_normal((37, 64))
    train[5] = 0.0
    dims = [2, 4, 8, 16, 64]
    out = prefix_neighbors(train, test, dims=dims, k=30, query_chunk=16)
    for m in dims:
        db, q = slice_then_normalise(train, m), slice_then_normalise(test, m)
        index = faiss.IndexFlatIP(m)
        index.add(db.astype(np.float32))
        ref_scores, ref_idx = index.search(q.astype(np.float32), 30)
        scores, idx = out[m]
        np.testing.assert_allclose(scores, ref_scores, atol=1e-5)
        np.testing.assert_array_equal(idx, brute_force(db, q, 30)[1])
        assert scores.dtype == np.float32 and idx.dtype == np.int64


def test_topk_heap_over_blocks_equals_sorting():
    from mrl.eval.search import TopK

    rng = np.random.default_rng(4)
    s = rng.standard_normal((6, 50)).astype(np.float32)
    heap = TopK(6, 7)
    heap.add(np.ascontiguousarray(s[:, :20]), 0)
    heap.add(np.ascontiguousarray(s[:, 20:]), 20)
    scores, ids = heap.result()
    ref = np.argsort(-s, axis=1)[:, :7]
    np.testing.assert_array_equal(ids, ref)
    np.testing.assert_array_equal(scores, np.take_along_axis(s, ref, 1))
    with pytest.raises(ValueError, match="C-contiguous float32"):
        heap.add(s[:, ::2], 0)


def test_exact_search_wide_vectors_use_faiss_knn_and_match_brute_force():
    from mrl.eval.search import FAISS_MIN_DIM

    rng = np.random.default_rng(5)
    d = FAISS_MIN_DIM + 8
    db, q = _unit(rng.standard_normal((120, d))), _unit(rng.standard_normal((9, d)))
    scores, idx = exact_search(db, q, k=11, query_chunk=4)
    ref_scores, ref_idx = brute_force(db, q, 11)
    np.testing.assert_array_equal(idx, ref_idx)
    np.testing.assert_allclose(scores, ref_scores, atol=1e-5)
