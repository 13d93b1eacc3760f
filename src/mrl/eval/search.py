"""Exact nearest-neighbour search with FAISS, once per prefix.

Conventions
-----------
* Similarity is the inner product. Inputs are expected to be L2-normalised already, so the
  inner product *is* the cosine similarity; :func:`prefix_neighbors` slices each prefix
  first and then normalises it (``truncate(z, m, normalize=True)``).
* Database = train embeddings, queries = test embeddings (DESIGN.md section 3).
* Results are sorted by decreasing score: ``scores`` is float32 ``(n_queries, k)``,
  ``indices`` int64 ``(n_queries, k)`` rows of the database. :func:`exact_search` orders
  tied scores by increasing database index (FAISS itself leaves their order unspecified);
  which of several items tied at the k-th place is returned is still FAISS's choice.
* One search per prefix at the largest ``k`` any evaluator needs; kNN and retrieval then
  read the first columns of the same result.
"""

from __future__ import annotations

from collections.abc import Sequence

import faiss
import numpy as np

from mrl.errors import MRLError
from mrl.eval._checks import as_matrix, positive_int, prefix_dims
from mrl.nesting import truncate

Neighbors = dict[int, tuple[np.ndarray, np.ndarray]]


def faiss_has_gpu() -> bool:
    """True when the installed FAISS was built with GPU support and sees a GPU."""
    return hasattr(faiss, "get_num_gpus") and faiss.get_num_gpus() > 0


def flat_ip_index(database: np.ndarray, use_gpu: bool | None = None) -> faiss.Index:
    """An exact inner-product index (``IndexFlatIP``) holding ``database``.

    ``use_gpu``: True forces a GPU index (MRLError if FAISS has none), False forces CPU,
    None uses a GPU when :func:`faiss_has_gpu`.
    """
    database = as_matrix(database, "database")
    gpu = faiss_has_gpu() if use_gpu is None else bool(use_gpu)
    if gpu and not faiss_has_gpu():
        raise MRLError("use_gpu=True but FAISS sees no GPU; install faiss-gpu or use use_gpu=None")
    index = faiss.IndexFlatIP(database.shape[1])
    if gpu:
        index = faiss.index_cpu_to_all_gpus(index)
    index.add(database)
    return index


def search_index(
    index: faiss.Index, queries: np.ndarray, k: int, query_chunk: int = 4096
) -> tuple[np.ndarray, np.ndarray]:
    """``index.search`` over ``queries`` in chunks of ``query_chunk`` rows (bounded memory)."""
    queries = as_matrix(queries, "queries")
    scores = np.empty((len(queries), k), dtype=np.float32)
    indices = np.empty((len(queries), k), dtype=np.int64)
    for start in range(0, len(queries), query_chunk):
        stop = start + query_chunk
        scores[start:stop], indices[start:stop] = index.search(queries[start:stop], k)
    return scores, indices


def exact_search(
    database: np.ndarray,
    queries: np.ndarray,
    k: int,
    use_gpu: bool | None = None,
    query_chunk: int = 4096,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-``k`` inner-product search (FAISS ``IndexFlatIP``).

    Args:
        database: ``(n, d)`` vectors, expected L2-normalised (then IP = cosine).
        queries: ``(q, d)`` vectors, expected L2-normalised.
        k: neighbours per query, ``1 <= k <= n``.
        use_gpu: True: GPU index; False: CPU; None: GPU when FAISS has one.
        query_chunk: queries searched per call, bounding the working memory.

    Returns:
        ``(scores, indices)``: float32 and int64 arrays of shape ``(q, k)``, best first,
        equal scores by increasing index. Inputs are cast to contiguous float32.
    """
    database = as_matrix(database, "database")
    queries = as_matrix(queries, "queries")
    if database.shape[1] != queries.shape[1]:
        raise MRLError(
            f"queries have width {queries.shape[1]} but the database has width "
            f"{database.shape[1]}; both must be the same prefix"
        )
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise MRLError(f"k={k!r} must be a positive integer")
    if k > len(database):
        raise MRLError(
            f"k={k} is larger than the database ({len(database)} items); use k <= {len(database)}"
        )
    query_chunk = positive_int(query_chunk, "query_chunk")
    index = flat_ip_index(database, use_gpu)
    scores, indices = search_index(index, queries, int(k), query_chunk)
    order = np.lexsort((indices, -scores), axis=1)  # ties: lower database index first
    return np.take_along_axis(scores, order, 1), np.take_along_axis(indices, order, 1)


def prefix_neighbors(
    train_x: np.ndarray,
    test_x: np.ndarray,
    dims: Sequence[int],
    k: int,
    use_gpu: bool | None = None,
    query_chunk: int = 4096,
) -> Neighbors:
    """Top-``k`` train neighbours of every test item, at every prefix size.

    For each ``m`` in ``dims``: ``truncate(., m, normalize=True)`` on both sides (slice, then
    L2-normalise), then :func:`exact_search` (cosine similarity).

    Returns:
        ``{m: (scores, indices)}`` with arrays of shape ``(n_test, k)``, keys sorted.
    """
    train_x = as_matrix(train_x, "train_x")
    test_x = as_matrix(test_x, "test_x")
    if train_x.shape[1] != test_x.shape[1]:
        raise MRLError(
            f"test_x has width {test_x.shape[1]} but train_x has width {train_x.shape[1]}"
        )
    return {
        m: exact_search(
            truncate(train_x, m, normalize=True),
            truncate(test_x, m, normalize=True),
            k,
            use_gpu=use_gpu,
            query_chunk=query_chunk,
        )
        for m in prefix_dims(dims, train_x.shape[1])
    }
