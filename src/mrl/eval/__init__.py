"""Evaluate a nested (Matryoshka) embedding at every prefix size: numpy in, dict out.

Conventions
-----------
* Database / support / probe-train = train embeddings; queries = test embeddings.
* kNN, retrieval, few-shot and adaptive retrieval slice each prefix, then L2-normalise it,
  and compare by cosine (exact FAISS inner-product search). The linear probe and the
  adaptive cascade read raw, unnormalised slices (standardised / logits).
* Metric values are fractions in [0, 1]; keys end in ``@d{m}`` for prefix size ``m``.

Typical use (one neighbour search shared by kNN and retrieval)::

    from mrl.eval import KNN, EvalData, Retrieval, run_evaluators
    data = EvalData(train_z, train_y, test_z, test_y, num_classes=10)
    metrics, seconds = run_evaluators({"knn": KNN(), "retrieval": Retrieval()}, data, dims)

Each evaluator is a class here plus ``conf/eval/<name>.yaml`` (see :mod:`mrl.eval.registry`).
"""

from __future__ import annotations

from mrl.eval.adaptive import (
    AdaptiveClassification,
    AdaptiveRetrieval,
    adaptive_classification,
    adaptive_classification_curve,
    adaptive_retrieval,
    cascade,
    learn_thresholds,
)
from mrl.eval.fewshot import FewShot, fewshot_metrics
from mrl.eval.funnel import Funnel, Stage
from mrl.eval.knn import KNN, knn_metrics
from mrl.eval.linear import Linear, head_logits
from mrl.eval.probe import Probe, linear_probe
from mrl.eval.registry import EvalData, Evaluator, build_evaluators, run_evaluators
from mrl.eval.retrieval import (
    Retrieval,
    map_at_k,
    precision_at_k,
    recall_at_k,
    retrieval_metrics,
)
from mrl.eval.search import exact_search, prefix_neighbors
from mrl.eval.shift import Shift, shift_metrics

__all__ = [
    "KNN",
    "AdaptiveClassification",
    "AdaptiveRetrieval",
    "EvalData",
    "Evaluator",
    "FewShot",
    "Funnel",
    "Linear",
    "Probe",
    "Retrieval",
    "Shift",
    "Stage",
    "adaptive_classification",
    "adaptive_classification_curve",
    "adaptive_retrieval",
    "build_evaluators",
    "cascade",
    "exact_search",
    "fewshot_metrics",
    "head_logits",
    "knn_metrics",
    "learn_thresholds",
    "linear_probe",
    "map_at_k",
    "precision_at_k",
    "prefix_neighbors",
    "recall_at_k",
    "retrieval_metrics",
    "run_evaluators",
    "shift_metrics",
]
