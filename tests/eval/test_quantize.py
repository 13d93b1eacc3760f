"""Precision grid (float16, int8, binary) against independent numpy references."""

from __future__ import annotations

import numpy as np
import pytest

from mrl import MRLError
from mrl.core.nesting import truncate
from mrl.eval import KNN, EvalData, Linear, Retrieval, build_evaluators, run_evaluators
from mrl.eval.quantize import (
    bytes_per_vector,
    check_precision,
    hamming_search,
    int8_ranges,
    quantize,
    quantized_neighbors,
    quantized_prefix,
)
from mrl.eval.report import precision_rows

# eval.py's kNN + retrieval on real pixels (below), computed by the code before the precision
# grid existed (git HEAD 0ab1933); the float32 path must still give exactly these numbers
GOLDEN = {
    "knn/top1@d128": 0.42,
    "knn/top1@d392": 0.685,
    "knn/top1@d784": 0.74,
    "knn/top1_k20@d128": 0.365,
    "knn/top1_k20@d392": 0.69,
    "knn/top1_k20@d784": 0.725,
    "retrieval/P@10@d128": 0.3385,
    "retrieval/P@10@d392": 0.6035,
    "retrieval/P@10@d784": 0.6594999999999999,
    "retrieval/P@25@d128": 0.2822,
    "retrieval/P@25@d392": 0.536,
    "retrieval/P@25@d784": 0.5660000000000001,
    "retrieval/R@10@d128": 0.08428393495665648,
    "retrieval/R@10@d392": 0.15682989102649963,
    "retrieval/R@10@d784": 0.1707327945253128,
    "retrieval/R@25@d128": 0.17348340320614944,
    "retrieval/R@25@d392": 0.3476789924041036,
    "retrieval/R@25@d784": 0.3624803410756606,
    "retrieval/mAP@10@d128": 0.2504202380952381,
    "retrieval/mAP@10@d392": 0.5265869047619048,
    "retrieval/mAP@10@d784": 0.5938865079365079,
    "retrieval/mAP@25@d128": 0.18513774608322683,
    "retrieval/mAP@25@d392": 0.4307942345952533,
    "retrieval/mAP@25@d784": 0.47396644051629705,
}


def _normalised(x: np.ndarray, m: int) -> np.ndarray:
    s = x[:, :m].astype(np.float64)
    return s / np.maximum(np.linalg.norm(s, axis=1, keepdims=True), 1e-12)


def _int8_reference(x: np.ndarray, db: np.ndarray) -> np.ndarray:
    """Codes by hand: 255 buckets between the database's per-dim min and max, minus 128."""
    lo, hi = db.min(0), db.max(0)
    step = np.where(hi > lo, (hi - lo) / 255, 1.0)
    return np.clip(np.floor((x - lo) / step), 0, 255) - 128


def test_int8_codes_and_scores_match_a_numpy_reference(clusters):
    train_x, _, test_x, _ = clusters
    m, k = 24, 10
    db, qs = _normalised(train_x, m), _normalised(test_x, m)
    ref_codes = _int8_reference(qs, db)
    codes = quantize(qs.astype(np.float32), "int8", calibration=db.astype(np.float32))
    assert codes.dtype == np.int8 and codes.shape == qs.shape
    diff = np.abs(codes.astype(np.int64) - ref_codes)
    assert diff.max() <= 1 and (diff == 0).mean() > 0.999  # float32 vs float64 at bucket edges
    assert codes.min() == -128 or codes.max() == 127  # some queries fall outside the ranges
    # scores: the search's own float32 slices (truncate), coded by hand in float32 as
    # sentence-transformers does, dequantised to the bucket's lower edge, inner products in
    # float64; codes then agree exactly and the scores to float32 rounding
    db32, qs32 = truncate(train_x, m, normalize=True), truncate(test_x, m, normalize=True)
    lo32, hi32 = db32.min(0), db32.max(0)
    step32 = (hi32 - lo32) / np.float32(255)

    def deq(x):
        codes = np.clip(np.floor((x - lo32) / step32), 0, 255) - 128
        return (codes.astype(np.float64) + 128) * step32 + lo32

    ref_scores = deq(qs32) @ deq(db32).T
    scores, ids = quantized_neighbors(train_x, test_x, [m], k, "int8")[m]
    np.testing.assert_allclose(scores, -np.sort(-ref_scores, axis=1)[:, :k], atol=1e-5)
    np.testing.assert_allclose(np.take_along_axis(ref_scores, ids, 1), scores, atol=1e-5)


def test_int8_calibration_uses_the_database_only(clusters):
    train_x, _, test_x, _ = clusters
    m = 16
    db_a, q_a = quantized_prefix(train_x, test_x, m, "int8")
    wild = test_x * 50 + 7  # queries far outside the database's ranges
    db_b, q_b = quantized_prefix(train_x, wild, m, "int8")
    np.testing.assert_array_equal(db_a, db_b)  # the database's codes ignore the queries
    db = _normalised(train_x, m).astype(np.float32)
    np.testing.assert_allclose(int8_ranges(db), [db.min(0), db.max(0)])
    # queries are coded with the database's ranges, so the extreme ones hit the end buckets
    assert not np.array_equal(q_a, q_b)
    lo, hi = int8_ranges(db)
    assert (q_b >= lo - 1e-6).all() and (q_b <= hi + 1e-6).all()


@pytest.mark.parametrize("m", [12, 64])  # 12: not a multiple of 8 (padded bits)
def test_binary_hamming_topk_matches_brute_force(clusters, m):
    train_x, _, test_x, _ = clusters
    k = 15
    bits_db, bits_q = quantized_prefix(train_x, test_x, m, "binary")
    ref_db = np.packbits(_normalised(train_x, m) > 0, axis=1)
    np.testing.assert_array_equal(bits_db, ref_db)
    assert bits_db.shape[1] == bytes_per_vector(m, "binary") == (m + 7) // 8
    # brute force: popcount of XOR over every pair
    ham = np.unpackbits(bits_q[:, None, :] ^ bits_db[None, :, :], axis=2).sum(2)
    dist, ids = hamming_search(bits_db, bits_q, k)
    np.testing.assert_array_equal(dist, np.sort(ham, axis=1)[:, :k])  # ties: distances
    np.testing.assert_array_equal(np.take_along_axis(ham, ids, 1), dist)
    assert (np.diff(dist, axis=1) >= 0).all()
    scores, ids2 = quantized_neighbors(train_x, test_x, [m], k, "binary")[m]
    np.testing.assert_allclose(scores, 1 - 2 * np.sort(ham, axis=1)[:, :k] / m, rtol=1e-6)
    np.testing.assert_array_equal(np.take_along_axis(ham, ids2, 1), dist)


def test_float16_scores_are_close_to_float32(clusters):
    train_x, _, test_x, _ = clusters
    s16, i16 = quantized_neighbors(train_x, test_x, [32], 5, "float16")[32]
    ref = _normalised(test_x, 32).astype(np.float16).astype(np.float64) @ (
        _normalised(train_x, 32).astype(np.float16).astype(np.float64).T
    )
    np.testing.assert_allclose(s16, -np.sort(-ref, axis=1)[:, :5], atol=1e-5)
    assert quantize(_normalised(train_x, 32), "float16").dtype == np.float16


def test_bytes_and_unknown_precision():
    assert [bytes_per_vector(64, p) for p in ("float32", "float16", "int8", "binary")] == [
        256,
        128,
        64,
        8,
    ]
    assert bytes_per_vector(12, "binary") == 2
    with pytest.raises(MRLError, match=r"precision='int4' is not a precision; use one of"):
        check_precision("int4")
    with pytest.raises(MRLError, match=r"eval.precisions='int4' is not a precision.*binary"):
        build_evaluators({"precisions": ["float32", "int4"], "knn": {"_target_": "mrl.eval.KNN"}})
    with pytest.raises(MRLError, match=r"eval.precisions='int8' must be a non-empty list"):
        build_evaluators({"precisions": "int8", "knn": {"_target_": "mrl.eval.KNN"}})


def test_float32_path_is_unchanged_and_precisions_add_suffixed_keys(pixels):
    dims = [128, 392, 784]

    def run(precisions):
        ev = build_evaluators(
            {
                "precisions": precisions,
                "knn": KNN(),
                "retrieval": Retrieval(ks=(10, 25)),
            }
        )
        return run_evaluators(ev, EvalData.from_arrays(pixels), dims)[0]

    plain = run(["float32"])
    assert plain == GOLDEN  # exactly today's numbers (no key added, none changed)
    grid = run(["float32", "int8", "binary"])
    assert {k: v for k, v in grid.items() if k in GOLDEN} == GOLDEN
    assert set(grid) == set(GOLDEN) | {f"{k}/{p}" for k in GOLDEN for p in ("int8", "binary")}
    # int8 keeps nearly everything on real pixels; 1 bit per dim loses more
    assert abs(grid["knn/top1@d784/int8"] - grid["knn/top1@d784"]) <= 0.03
    assert 0.3 < grid["knn/top1@d784/binary"] <= 1
    rows = precision_rows(grid, ["knn/top1"], dims)
    row = next(r for r in rows if r["precision"] == "int8" and r["dim"] == 392)
    assert row["bytes"] == 392
    assert row["knn/top1 retention"] == grid["knn/top1@d392/int8"] / grid["knn/top1@d784"]
    assert [r["precision"] for r in rows] == ["float32"] * 3 + ["int8"] * 3 + ["binary"] * 3
    assert precision_rows(plain, ["knn/top1"], dims) == []  # float32 alone: no extra table


def test_trained_heads_read_quantized_raw_slices(clusters):
    train_x, train_y, test_x, test_y = clusters
    rng = np.random.default_rng(1)
    weights = {m: rng.standard_normal((m, 5)).astype(np.float32) for m in (8, 64)}

    def heads(z):
        return {m: np.asarray(z)[:, :m] @ w for m, w in weights.items()}

    data = EvalData(train_x, train_y, test_x, test_y, 5, heads=heads)
    ev = build_evaluators(
        {"precisions": ["float32", "float16", "int8", "binary"], "linear": Linear()}
    )
    assert ev["linear"].precisions == ("float32", "float16", "int8")  # no binary for heads
    metrics, _ = run_evaluators(ev, data, [8, 64])
    # reference: raw (unnormalised) test vectors coded by hand with the train rows' ranges
    lo, hi = train_x.min(0), train_x.max(0)
    step = (hi - lo) / np.float32(255)
    codes = np.clip(np.floor((test_x - lo) / step), 0, 255)
    deq = (codes * step + lo).astype(np.float32)
    f16 = test_x.astype(np.float16).astype(np.float32)
    for m, w in weights.items():
        acc = lambda z: float(np.mean((z[:, :m] @ w).argmax(1) == test_y))  # noqa: B023, E731
        assert metrics[f"linear/top1@d{m}"] == acc(test_x)
        assert metrics[f"linear/top1@d{m}/int8"] == acc(deq)
        assert metrics[f"linear/top1@d{m}/float16"] == acc(f16)
    assert not any(k.endswith("/binary") for k in metrics)
