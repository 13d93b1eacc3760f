"""Evaluate a nested (Matryoshka) embedding at every prefix size: pure numpy-in, dict-out.

Conventions (DESIGN.md sections 1 and 3)
----------------------------------------
* Database / support / probe-train = train embeddings; queries = test embeddings.
* kNN, retrieval, few-shot and adaptive retrieval slice each prefix, then L2-normalise it,
  and compare by cosine (exact FAISS inner-product search). The linear probe and the
  adaptive cascade read raw, unnormalised slices (standardised / logits).
* Metric values are fractions in [0, 1]; keys end in ``@d{m}`` for prefix size ``m``.

Typical use::

    from mrl.eval import evaluate_embeddings
    metrics = evaluate_embeddings(train_z, train_y, test_z, test_y, dims, num_classes=10)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from mrl.errors import MRLError
from mrl.eval.adaptive import (
    adaptive_classification,
    adaptive_classification_curve,
    adaptive_retrieval,
    cascade,
    learn_thresholds,
)
from mrl.eval.fewshot import fewshot_metrics
from mrl.eval.knn import knn_metrics
from mrl.eval.probe import linear_probe
from mrl.eval.retrieval import map_at_k, precision_at_k, recall_at_k, retrieval_metrics
from mrl.eval.search import exact_search, prefix_neighbors

EVALUATORS = ("knn", "retrieval", "fewshot", "probe")


def evaluate_embeddings(
    train_x: np.ndarray,
    train_y: np.ndarray,
    test_x: np.ndarray,
    test_y: np.ndarray,
    dims: Sequence[int],
    num_classes: int,
    evaluators: Sequence[str] = EVALUATORS,
    knn_k: int = 20,
    knn_T: float = 0.07,
    retrieval_ks: Sequence[int] = (10, 25, 50, 100),
    recall_denominator: str | int = "class_count",
    fewshot_kwargs: dict[str, Any] | None = None,
    probe_kwargs: dict[str, Any] | None = None,
    use_gpu: bool | None = None,
) -> dict[str, float]:
    """Run the chosen evaluators on every prefix and return one flat dict of metrics.

    Neighbours are searched once per prefix, at ``k = max(knn_k, max(retrieval_ks))``, and
    shared by ``"knn"`` and ``"retrieval"``. ``fewshot_kwargs`` / ``probe_kwargs`` are passed
    on to :func:`fewshot_metrics` / :func:`linear_probe`.
    """
    unknown = [e for e in evaluators if e not in EVALUATORS]
    if unknown or not evaluators:
        raise MRLError(f"evaluators={list(evaluators)}: choose from {list(EVALUATORS)}")
    out: dict[str, float] = {}
    need_k = [knn_k] * ("knn" in evaluators) + [max(retrieval_ks, default=1)] * (
        "retrieval" in evaluators
    )
    if need_k:
        neighbors = prefix_neighbors(train_x, test_x, dims, max(need_k), use_gpu=use_gpu)
        if "knn" in evaluators:
            out |= knn_metrics(neighbors, train_y, test_y, num_classes, k=knn_k, T=knn_T)
        if "retrieval" in evaluators:
            out |= retrieval_metrics(neighbors, train_y, test_y, retrieval_ks, recall_denominator)
    if "fewshot" in evaluators:
        out |= fewshot_metrics(train_x, train_y, test_x, test_y, dims, **(fewshot_kwargs or {}))
    if "probe" in evaluators:
        out |= linear_probe(
            train_x, train_y, test_x, test_y, dims, num_classes, **(probe_kwargs or {})
        )
    return out


__all__ = [
    "EVALUATORS",
    "adaptive_classification",
    "adaptive_classification_curve",
    "adaptive_retrieval",
    "cascade",
    "evaluate_embeddings",
    "exact_search",
    "fewshot_metrics",
    "knn_metrics",
    "learn_thresholds",
    "linear_probe",
    "map_at_k",
    "precision_at_k",
    "prefix_neighbors",
    "recall_at_k",
    "retrieval_metrics",
]
