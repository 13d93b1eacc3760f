"""Text retrieval metrics with ONE relevant document per query, at every prefix size.

Conventions
-----------
Database = document embeddings, queries = query embeddings; each prefix is sliced, then
L2-normalised, and searched exactly by cosine (:func:`mrl.eval.search.prefix_neighbors`, the
same search as the image evaluators; equal scores rank the lower document index first).
``relevant[i]`` is the row of query ``i``'s one relevant document. With ``rank`` its 1-based
position in the ranking (``inf`` when it is not among the first ``k``), per query:

* ``R@k = 1[rank <= k]`` (recall with one relevant document, i.e. the hit rate);
* ``MRR@k = 1 / rank`` if ``rank <= k`` else 0;
* ``nDCG@k = 1 / log2(rank + 1)`` if ``rank <= k`` else 0: binary relevance, and the ideal
  DCG of one relevant document is 1 (it ranked first), so nDCG equals DCG.

Each metric is averaged over queries (fractions in [0, 1]). Keys: ``{prefix}R@{k}@d{m}``,
``{prefix}MRR@{k}@d{m}``, ``{prefix}nDCG@{k}@d{m}`` (e.g. ``test/nDCG@10@d48``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from mrl.core.errors import MRLError
from mrl.core.validate import as_labels, as_matrix, is_int
from mrl.eval.registry import EvalData, Evaluator
from mrl.eval.search import Neighbors, prefix_neighbors

DEFAULT_KS = (1, 10)


def relevant_ranks(indices: np.ndarray, relevant: np.ndarray) -> np.ndarray:
    """1-based rank of each query's relevant document in its ``(q, k)`` neighbour ids,
    ``inf`` when it is not among them."""
    hit = np.asarray(indices) == np.asarray(relevant)[:, None]
    found = hit.any(axis=1)
    return np.where(found, hit.argmax(axis=1) + 1.0, np.inf)


def recall_at_k(ranks: np.ndarray, k: int) -> np.ndarray:
    """Per-query ``1[rank <= k]``."""
    return (ranks <= k).astype(np.float64)


def mrr_at_k(ranks: np.ndarray, k: int) -> np.ndarray:
    """Per-query ``1 / rank`` when ``rank <= k``, else 0."""
    return np.where(ranks <= k, 1.0 / ranks, 0.0)


def ndcg_at_k(ranks: np.ndarray, k: int) -> np.ndarray:
    """Per-query nDCG@k with one relevant document: ``1 / log2(rank + 1)`` when
    ``rank <= k``, else 0 (ideal DCG = 1)."""
    return np.where(ranks <= k, 1.0 / np.log2(ranks + 1.0), 0.0)


def check_ks(ks: Sequence[int], example: str = "(1, 10)") -> list[int]:
    """The sorted distinct cut-offs of ``ks``; anything but positive integers is one line."""
    given = list(ks)
    if not given or any(not is_int(k) or k < 1 for k in given):
        raise MRLError(f"ks={ks!r} must be positive integers such as {example}")
    return sorted({int(k) for k in given})


def metrics_from_neighbors(
    neighbors: Neighbors, relevant: np.ndarray, ks: Sequence[int] = DEFAULT_KS, prefix: str = ""
) -> dict[str, float]:
    """``R@k`` for every k in ``ks``, and ``MRR@k`` / ``nDCG@k`` at the largest k, per prefix
    (see the module doc). ``neighbors``: ``{m: (scores, ids)}`` with at least ``max(ks)``
    columns, or all documents when there are fewer."""
    ks = check_ks(ks)
    out: dict[str, float] = {}
    for m, (_, idx) in sorted(neighbors.items()):
        ranks = relevant_ranks(idx[:, : ks[-1]], relevant)
        for k in ks:
            out[f"{prefix}R@{k}@d{m}"] = float(recall_at_k(ranks, k).mean())
        out[f"{prefix}MRR@{ks[-1]}@d{m}"] = float(mrr_at_k(ranks, ks[-1]).mean())
        out[f"{prefix}nDCG@{ks[-1]}@d{m}"] = float(ndcg_at_k(ranks, ks[-1]).mean())
    return out


def text_retrieval_metrics(
    docs: np.ndarray,
    queries: np.ndarray,
    relevant: np.ndarray,
    dims: Sequence[int],
    ks: Sequence[int] = DEFAULT_KS,
    prefix: str = "",
) -> dict[str, float]:
    """Search ``queries`` among ``docs`` at every prefix in ``dims`` and score them.

    Args:
        docs: ``(n_docs, d)`` full-width document embeddings (not normalised).
        queries: ``(n_queries, d)`` full-width query embeddings.
        relevant: ``(n_queries,)`` row in ``docs`` of each query's relevant document.
        dims: prefix sizes; ks: cut-offs (MRR and nDCG at the largest); prefix: key prefix.
    """
    docs = as_matrix(docs, "docs")
    queries = as_matrix(queries, "queries")
    relevant = as_labels(relevant, len(queries), "relevant")
    if len(relevant) and (relevant.min() < 0 or relevant.max() >= len(docs)):
        raise MRLError(f"relevant must index the {len(docs)} documents (0..{len(docs) - 1})")
    ks = check_ks(ks)
    neighbors = prefix_neighbors(docs, queries, dims, min(ks[-1], len(docs)))
    return metrics_from_neighbors(neighbors, relevant, ks, prefix)


class TextRetrieval(Evaluator):
    """``text_retrieval/{R@k,MRR@K,nDCG@K}@d{m}`` on an :class:`EvalData` whose ``train_*``
    are documents (``train_y`` = document ids) and ``test_*`` queries (``test_y`` = the id
    of each query's relevant document)."""

    main_metric = "text_retrieval/nDCG@10"
    precision_aware = True  # reads only the shared neighbours: every precision and baseline

    def __init__(self, ks: Sequence[int] = DEFAULT_KS) -> None:
        self.ks = tuple(check_ks(ks))
        self.main_metric = f"text_retrieval/nDCG@{self.ks[-1]}"

    def neighbours_needed(self) -> int:
        return self.ks[-1]

    def __call__(self, data: EvalData, dims: Sequence[int]) -> dict[str, float]:
        ids = np.asarray(data.train_y)
        pos = {int(d): i for i, d in enumerate(ids)}
        if len(pos) != len(ids):
            raise MRLError("text retrieval needs one document per id (train_y has duplicates)")
        missing = [int(y) for y in data.test_y if int(y) not in pos]
        if missing:
            raise MRLError(f"query's relevant document {missing[0]} is not in the documents")
        relevant = np.asarray([pos[int(y)] for y in data.test_y], np.int64)
        return metrics_from_neighbors(data.neighbors, relevant, self.ks, "text_retrieval/")
