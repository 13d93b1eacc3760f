"""1-NN and DINO-style weighted kNN accuracy at every prefix size.

Conventions
-----------
* Database = train embeddings, queries = test embeddings; each prefix is sliced and then
  L2-normalised before an exact cosine search (see :func:`mrl.eval.search.prefix_neighbors`).
* ``knn/top1@d{m}``: 1-NN accuracy, the label of the single nearest train item.
* ``knn/top1_k{k}@d{m}``: weighted kNN as in DINO's ``eval_knn``: each of the top ``k``
  neighbours votes for its label with weight ``exp(score / T)`` (k=20, T=0.07); the class
  with the largest total wins. Ties go to the smallest class index.
* Values are fractions in [0, 1].
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from mrl.core.errors import MRLError
from mrl.core.validate import as_labels, positive_int
from mrl.eval._checks import neighbours_k
from mrl.eval.registry import EvalData, Evaluator
from mrl.eval.search import Neighbors


def weighted_knn_predict(
    scores: np.ndarray,
    labels: np.ndarray,
    num_classes: int,
    T: float = 0.07,
    chunk: int = 4096,
) -> np.ndarray:
    """Class with the largest sum of ``exp(score / T)`` over the given neighbours.

    Args:
        scores: ``(q, k)`` cosine similarities of the neighbours.
        labels: ``(q, k)`` their class labels.
        num_classes: number of classes ``C``.
        T: temperature.
        chunk: queries per block, so the ``(chunk, C)`` vote matrix stays small (fewer
            when ``C`` is large: at most 2**24 votes per block).

    Returns:
        ``(q,)`` int64 predictions. Weights are shifted by the row maximum before ``exp``
        (same argmax, no overflow).
    """
    preds = np.empty(len(scores), dtype=np.int64)
    chunk = max(1, min(chunk, (1 << 24) // max(1, num_classes)))  # votes: <= 128 MiB
    for start in range(0, len(scores), chunk):
        votes = weighted_knn_votes(
            scores[start : start + chunk], labels[start : start + chunk], num_classes, T
        )
        preds[start : start + chunk] = votes.argmax(axis=1)
    return preds


def weighted_knn_votes(
    scores: np.ndarray, labels: np.ndarray, num_classes: int, T: float = 0.07
) -> np.ndarray:
    """``(q, C)`` float64 votes: for each query, the sum of ``exp(score / T)`` of its given
    neighbours per class, shifted by the row's best score (same order, no overflow)."""
    s = np.asarray(scores, dtype=np.float64)
    w = np.exp((s - s.max(axis=1, keepdims=True)) / T)
    rows = np.arange(len(s))[:, None] * num_classes
    votes = np.bincount((rows + labels).ravel(), w.ravel(), minlength=len(s) * num_classes)
    return votes.reshape(len(s), num_classes)


def knn_metrics(
    neighbors: Neighbors,
    train_y: np.ndarray,
    test_y: np.ndarray,
    num_classes: int,
    k: int = 20,
    T: float = 0.07,
) -> dict[str, float]:
    """1-NN and weighted kNN accuracy per prefix.

    Args:
        neighbors: ``{m: (scores, indices)}`` from :func:`prefix_neighbors`, with at least
            ``k`` neighbours per query, sorted best first.
        train_y: ``(n_train,)`` labels of the database.
        test_y: ``(n_test,)`` labels of the queries.
        num_classes: labels lie in ``0..num_classes-1``.
        k: neighbours that vote in the weighted kNN (DINO: 20).
        T: temperature of the vote weights ``exp(score / T)`` (DINO: 0.07).

    Returns:
        ``{"knn/top1@d{m}": ..., "knn/top1_k{k}@d{m}": ...}`` for every prefix, in [0, 1].
    """
    k = positive_int(k, "k")
    if not float(T) > 0:
        raise MRLError(f"T={T!r} must be a positive temperature (DINO: 0.07)")
    num_classes = positive_int(num_classes, "num_classes")
    neighbours_k(neighbors, k, "knn_metrics")
    train_y = as_labels(train_y, len(train_y), "train_y", num_classes)
    n_test = len(next(iter(neighbors.values()))[1])
    y = as_labels(test_y, n_test, "test_y", num_classes)
    out: dict[str, float] = {}
    for m, (scores, idx) in sorted(neighbors.items()):
        labels = train_y[idx[:, :k]]
        out[f"knn/top1@d{m}"] = float(np.mean(labels[:, 0] == y))
        pred = weighted_knn_predict(scores[:, :k], labels, num_classes, T)
        out[f"knn/top1_k{k}@d{m}"] = float(np.mean(pred == y))
    return out


class KNN(Evaluator):
    """``knn/top1@d{m}`` (1-NN) and ``knn/top1_k{k}@d{m}`` (DINO's weighted kNN, T)."""

    main_metric = "knn/top1"
    precision_aware = True

    def __init__(self, k: int = 20, T: float = 0.07) -> None:
        self.k, self.T = k, T

    def neighbours_needed(self) -> int:
        return int(self.k)

    def __call__(self, data: EvalData, dims: Sequence[int]) -> dict[str, float]:
        return knn_metrics(
            data.neighbors, data.train_y, data.test_y, data.num_classes, k=self.k, T=self.T
        )
