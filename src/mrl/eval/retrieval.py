"""Image retrieval metrics (precision, the paper's mAP, recall) at every prefix size.

Conventions
-----------
Database = train embeddings, queries = test embeddings, each prefix sliced then
L2-normalised, exact cosine search. ``hits[i, j] = 1`` when the ``j``-th neighbour
(1-based rank ``j``) of query ``i`` has the query's label, else 0. Per query:

* ``precision@k = sum(hits[:k]) / k``
* ``mAP@k = sum_{j <= k, hits[j] = 1} precision@j / k``: the paper's "corrected" mAP.
  It divides by ``k``, **not** by the number of hits, so a query with few hits scores low
  even if they rank first.
* ``recall@k = sum(hits[:k]) / R`` where ``R`` is the number of database items with the
  query's label (default, ``recall_denominator="class_count"``) or a constant int (the
  paper's code uses 1300, ImageNet's images per class). A query whose class is absent
  from the database has recall 0 under ``"class_count"``.

Each metric is averaged over queries; values are fractions in [0, 1] (recall with a
constant denominator smaller than a class's size could exceed 1; the paper's does not).
Keys: ``retrieval/P@{k}@d{m}``, ``retrieval/mAP@{k}@d{m}``, ``retrieval/R@{k}@d{m}``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from mrl.core.errors import MRLError
from mrl.core.validate import as_labels, is_int, positive_int
from mrl.eval._checks import neighbours_k
from mrl.eval.registry import EvalData, Evaluator
from mrl.eval.search import Neighbors


def _check_k(hits: np.ndarray, k: int) -> None:
    positive_int(k, "k")
    if k > hits.shape[1]:
        raise MRLError(
            f"k={k} exceeds the {hits.shape[1]} neighbours available per query; "
            f"use k <= {hits.shape[1]}"
        )


def precision_at_k(hits: np.ndarray, k: int) -> np.ndarray:
    """Per-query precision@k: hits among the top ``k`` divided by ``k``.

    ``hits``: ``(q, n)`` 0/1 matrix, columns in rank order, ``n >= k``. Returns ``(q,)``.
    """
    _check_k(hits, k)
    return hits[:, :k].sum(axis=1, dtype=np.float64) / k


def map_at_k(hits: np.ndarray, k: int) -> np.ndarray:
    """Per-query mAP@k, the paper's "corrected" AP: ``sum_{j<=k, hit_j} precision@j / k``.

    Divides by ``k`` (not by the number of hits). ``hits``: ``(q, n)`` 0/1 matrix in rank
    order, ``n >= k``. Returns ``(q,)``.
    """
    _check_k(hits, k)
    h = hits[:, :k].astype(np.float64)
    precision_at_j = np.cumsum(h, axis=1) / np.arange(1, k + 1)
    return (precision_at_j * h).sum(axis=1) / k


def recall_at_k(hits: np.ndarray, k: int, denominator: np.ndarray | float) -> np.ndarray:
    """Per-query recall@k: hits among the top ``k`` divided by ``denominator``.

    ``denominator``: ``(q,)`` relevant items per query (database items of its class) or one
    constant. Queries with a zero denominator get 0. Returns ``(q,)``.
    """
    _check_k(hits, k)
    found = hits[:, :k].sum(axis=1, dtype=np.float64)
    denom = np.broadcast_to(np.asarray(denominator, dtype=np.float64), found.shape)
    return np.divide(found, denom, out=np.zeros_like(found), where=denom > 0)


def class_counts(train_y: np.ndarray, query_y: np.ndarray) -> np.ndarray:
    """Number of database items carrying each query's label (0 if the class is absent)."""
    classes, counts = np.unique(train_y, return_counts=True)
    pos = np.searchsorted(classes, query_y).clip(max=len(classes) - 1)
    return np.where(classes[pos] == query_y, counts[pos], 0)


def retrieval_metrics(
    neighbors: Neighbors,
    train_y: np.ndarray,
    test_y: np.ndarray,
    ks: Sequence[int] = (10, 25, 50, 100),
    recall_denominator: str | int = "class_count",
) -> dict[str, float]:
    """Precision, mAP and recall at every ``k`` in ``ks`` and every prefix.

    Args:
        neighbors: ``{m: (scores, indices)}`` from :func:`prefix_neighbors` with at least
            ``max(ks)`` neighbours per query.
        train_y: ``(n_train,)`` database labels; test_y: ``(n_test,)`` query labels.
        ks: cut-offs.
        recall_denominator: ``"class_count"`` (database items of the query's class) or a
            positive int used for every query (the paper's code: 1300).

    Returns:
        Flat dict of fractions, see the module docstring for the keys and definitions.
    """
    given = list(ks)
    if not given or any(not is_int(k) or k < 1 for k in given):
        raise MRLError(f"ks={ks!r} must be positive integers such as (10, 25, 50, 100)")
    ks = sorted({int(k) for k in given})
    neighbours_k(neighbors, ks[-1], "retrieval_metrics")
    train_y = as_labels(train_y, len(train_y), "train_y")
    n_test = len(next(iter(neighbors.values()))[1])
    test_y = as_labels(test_y, n_test, "test_y")
    if recall_denominator == "class_count":
        denom = class_counts(train_y, test_y)
    elif is_int(recall_denominator):
        denom = positive_int(recall_denominator, "recall_denominator")
    else:
        raise MRLError(
            f"recall_denominator={recall_denominator!r}; use 'class_count' or a positive int "
            "such as 1300"
        )
    out: dict[str, float] = {}
    for m, (_, idx) in sorted(neighbors.items()):
        hits = train_y[idx[:, : ks[-1]]] == test_y[:, None]
        for k in ks:
            out[f"retrieval/P@{k}@d{m}"] = float(precision_at_k(hits, k).mean())
            out[f"retrieval/mAP@{k}@d{m}"] = float(map_at_k(hits, k).mean())
            out[f"retrieval/R@{k}@d{m}"] = float(recall_at_k(hits, k, denom).mean())
    return out


class Retrieval(Evaluator):
    """``retrieval/{P,mAP,R}@{k}@d{m}`` for every k in ``ks`` (see the module's conventions)."""

    precision_aware = True

    def __init__(
        self, ks: Sequence[int] = (10, 25, 50, 100), recall_denominator: str | int = "class_count"
    ) -> None:
        self.ks = tuple(ks)
        self.recall_denominator = recall_denominator

    def neighbours_needed(self) -> int:
        return max(self.ks, default=1)

    def main_metrics(self, metrics) -> list[str]:
        return [f"retrieval/mAP@{min(self.ks)}"] if self.ks else []

    def __call__(self, data: EvalData, dims: Sequence[int]) -> dict[str, float]:
        return retrieval_metrics(
            data.neighbors, data.train_y, data.test_y, self.ks, self.recall_denominator
        )
