"""Evaluate every prefix at lower precision: float16, int8 and binary embeddings.

Conventions (the order of operations is fixed and the same for every precision)
----------------------------------------------------------------------------------
1. slice to the prefix ``m`` (:func:`mrl.core.nesting.truncate`),
2. L2-normalise the slice (the evaluators' default),
3. quantize. ``int8`` ranges are calibrated on the **database** (train) rows only; the
   queries (test) are quantized with those same ranges, so they never change them.

Precisions (``bytes_per_vector`` per prefix ``m``):

* ``float32``: the evaluators' usual path (4 m bytes).
* ``float16``: a cast (2 m bytes). Scored by the inner product of the float16 values,
  computed in float32.
* ``int8``: as sentence-transformers' ``quantize_embeddings(precision="int8",
  calibration_embeddings=...)``: per-dimension ranges ``[min, max]`` of the calibration
  rows, 255 buckets of width ``(max - min) / 255`` (width 1 for a constant dim),
  ``code = clip(floor((x - min) / step), 0, 255) - 128`` (m bytes). Scored by the inner
  product of the *dequantised* vectors ``(code + 128) * step + min`` (its
  ``_dequantize_embeddings``), in float32: the scores stay on the cosine scale, so kNN's
  ``exp(score / T)`` votes keep their meaning (the raw integer products would not).
* ``binary``: one sign bit per dim, ``x > 0``, packed by ``np.packbits`` (sentence-transformers'
  ``ubinary``; ``ceil(m / 8)`` bytes). Compared by Hamming distance ``h`` (FAISS
  ``IndexBinaryFlat``, exact); reported score ``1 - 2 h / m`` = the cosine of the
  ``+-1`` sign vectors, so a smaller distance is a larger score.

Neighbours come back as :func:`mrl.eval.search.prefix_neighbors` gives them: ``{m: (scores,
ids)}``, best first, equal scores by increasing database index. The metric keys of a
non-float32 precision carry the suffix ``/{precision}`` after ``@d{m}``, e.g.
``knn/top1@d64/int8`` (see :mod:`mrl.eval.registry`).

Trained heads (``linear``) read raw, unnormalised slices, so for them step 2 is skipped:
:func:`quantize_raw` codes the raw vectors (int8 ranges again from the database rows).
"""

from __future__ import annotations

from collections.abc import Sequence

import faiss
import numpy as np

from mrl.core.errors import MRLError
from mrl.core.nesting import truncate
from mrl.core.validate import as_matrix, is_int
from mrl.eval._checks import prefix_dims
from mrl.eval.search import exact_search, prefix_neighbors

#: every precision an evaluation can run at, in decreasing size
PRECISIONS = ("float32", "float16", "int8", "binary")
#: the order of operations, written next to the results
PROTOCOL = (
    "slice to m -> L2-normalise -> quantize; int8 ranges = per-dim min/max of the database "
    "(train) rows, 255 buckets; float16/int8 scored by inner product of the (dequantised) "
    "values, binary by Hamming distance (score 1 - 2h/m)"
)

Neighbors = dict[int, tuple[np.ndarray, np.ndarray]]


def check_precision(precision: object, name: str = "precision") -> str:
    """``precision`` if it is one of :data:`PRECISIONS`, else a one-line MRLError."""
    if not isinstance(precision, str) or precision not in PRECISIONS:
        raise MRLError(f"{name}={precision!r} is not a precision; use one of {list(PRECISIONS)}")
    return precision


def check_precisions(values: object, name: str = "eval.precisions") -> list[str]:
    """A non-empty list of precisions, duplicates dropped, in the given order."""
    if isinstance(values, str) or not isinstance(values, Sequence) or not values:
        raise MRLError(
            f"{name}={values!r} must be a non-empty list of precisions, e.g. "
            f"[float32,int8,binary] (valid: {list(PRECISIONS)})"
        )
    out: list[str] = []
    for p in values:
        if check_precision(p, name) not in out:
            out.append(p)
    return out


def bytes_per_vector(m: int, precision: str) -> int:
    """Storage of one ``m``-dim vector: ``4m`` (float32), ``2m``, ``m`` (int8), ``ceil(m/8)``."""
    if not is_int(m) or m < 1:
        raise MRLError(f"m={m!r} must be a positive integer (a prefix size)")
    precision = check_precision(precision)
    if precision == "binary":
        return (int(m) + 7) // 8
    return int(m) * {"float32": 4, "float16": 2, "int8": 1}[precision]


def int8_ranges(calibration: np.ndarray) -> np.ndarray:
    """``(2, d)`` float32 per-dimension ``[min; max]`` of the calibration rows."""
    cal = as_matrix(calibration, "calibration")
    return np.vstack((cal.min(axis=0), cal.max(axis=0))).astype(np.float32)


def _steps(ranges: np.ndarray) -> np.ndarray:
    steps = (ranges[1] - ranges[0]) / 255
    return np.where(steps == 0, 1, steps).astype(np.float32)


def quantize(
    x: np.ndarray,
    precision: str,
    calibration: np.ndarray | None = None,
    ranges: np.ndarray | None = None,
) -> np.ndarray:
    """``x`` (``(n, d)`` floats, already sliced and normalised) at ``precision``.

    Returns float32 / float16 values, int8 codes (``ranges`` if given, else those of
    ``calibration``, else of ``x`` itself) or uint8 packed sign bits ``(n, ceil(d / 8))``.
    """
    precision = check_precision(precision)
    x = as_matrix(x, "x")
    if precision == "float32":
        return x
    if precision == "float16":
        return x.astype(np.float16)
    if precision == "binary":
        return np.packbits(x > 0, axis=-1)
    if ranges is None:
        ranges = int8_ranges(x if calibration is None else calibration)
    ranges = np.asarray(ranges, dtype=np.float32)
    if ranges.shape != (2, x.shape[1]):
        raise MRLError(f"int8 ranges have shape {ranges.shape}; expected (2, {x.shape[1]})")
    codes = np.clip(np.floor((x - ranges[0]) / _steps(ranges)), 0, 255)
    return (codes - 128).astype(np.int8)


def dequantize(codes: np.ndarray, ranges: np.ndarray) -> np.ndarray:
    """float32 values of int8 ``codes``: ``(code + 128) * step + min`` (the bucket's lower edge)."""
    ranges = np.asarray(ranges, dtype=np.float32)
    return ((codes.astype(np.float32) + 128) * _steps(ranges) + ranges[0]).astype(np.float32)


def hamming_search(
    database_bits: np.ndarray, query_bits: np.ndarray, k: int, query_chunk: int = 4096
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-``k`` smallest Hamming distances (FAISS ``IndexBinaryFlat``).

    ``database_bits`` / ``query_bits``: uint8 ``(n, b)`` / ``(q, b)`` packed bits. Returns
    int32 distances and int64 ids ``(q, k)``, nearest first, equal distances by increasing id.
    """
    db = np.ascontiguousarray(database_bits, dtype=np.uint8)
    qs = np.ascontiguousarray(query_bits, dtype=np.uint8)
    if db.ndim != 2 or qs.ndim != 2 or db.shape[1] != qs.shape[1]:
        raise MRLError(f"packed bits of shapes {db.shape} and {qs.shape} do not match")
    if not is_int(k) or not 1 <= k <= len(db):
        raise MRLError(f"k={k!r} must be an integer in 1..{len(db)} (the database size)")
    index = faiss.IndexBinaryFlat(8 * db.shape[1])
    index.add(db)
    dist = np.empty((len(qs), k), np.int32)
    ids = np.empty((len(qs), k), np.int64)
    for start in range(0, len(qs), query_chunk):
        dist[start : start + query_chunk], ids[start : start + query_chunk] = index.search(
            qs[start : start + query_chunk], k
        )
    order = np.lexsort((ids, dist), axis=1)
    return np.take_along_axis(dist, order, 1), np.take_along_axis(ids, order, 1)


def quantized_prefix(
    database: np.ndarray, queries: np.ndarray, m: int, precision: str
) -> tuple[np.ndarray, np.ndarray]:
    """Slice to ``m``, L2-normalise, quantize both sides (int8 calibrated on ``database``).

    Returns the arrays that are compared: float32 values (float32, float16 as float32,
    dequantised int8) or packed sign bits (binary).
    """
    precision = check_precision(precision)
    db = truncate(database, m, normalize=True)
    qs = truncate(queries, m, normalize=True)
    if precision == "int8":
        ranges = int8_ranges(db)  # the database rows only
        return (
            dequantize(quantize(db, "int8", ranges=ranges), ranges),
            dequantize(quantize(qs, "int8", ranges=ranges), ranges),
        )
    if precision == "float16":
        return quantize(db, "float16").astype(np.float32), quantize(qs, "float16").astype(
            np.float32
        )
    return quantize(db, precision), quantize(qs, precision)


def quantize_raw(database: np.ndarray, queries: np.ndarray, precision: str) -> np.ndarray:
    """``queries`` as a trained head reads them at ``precision``: the raw, *unnormalised*
    full-width vectors, cast (float16) or int8-coded with per-dim ranges of the
    ``database`` rows and dequantised, as float32.

    The ranges are per dimension, so slicing the result to ``m`` equals quantizing the
    ``m``-dim slice itself: one pass serves every prefix. Binary is refused (a head's
    weights expect magnitudes, not signs).
    """
    precision = check_precision(precision)
    if precision == "binary":
        raise MRLError(
            "precision='binary' has no raw-slice form for trained heads; use float16 or int8"
        )
    queries = as_matrix(queries, "queries")
    if precision == "float32":
        return queries
    if precision == "float16":
        return queries.astype(np.float16).astype(np.float32)
    ranges = int8_ranges(database)
    return dequantize(quantize(queries, "int8", ranges=ranges), ranges)


def quantized_neighbors(
    train_x: np.ndarray,
    test_x: np.ndarray,
    dims: Sequence[int],
    k: int,
    precision: str,
    use_gpu: bool | None = None,
) -> Neighbors:
    """Top-``k`` train neighbours of every test item at every prefix, at ``precision``.

    ``float32`` is :func:`mrl.eval.search.prefix_neighbors` itself. Others: see the module
    conventions. Returns ``{m: (scores, ids)}``, float32 / int64 ``(n_test, k)``.
    """
    precision = check_precision(precision)
    if precision == "float32":
        return prefix_neighbors(train_x, test_x, dims, k, use_gpu=use_gpu)
    train_x = as_matrix(train_x, "train_x")
    test_x = as_matrix(test_x, "test_x")
    dims = prefix_dims(dims, train_x.shape[1])
    out: Neighbors = {}
    for m in dims:
        db, qs = quantized_prefix(train_x, test_x, m, precision)
        if precision == "binary":
            dist, ids = hamming_search(db, qs, k)
            out[m] = (1 - 2 * dist.astype(np.float32) / m, ids)
        else:
            out[m] = exact_search(db, qs, k, use_gpu=use_gpu)
    return out
