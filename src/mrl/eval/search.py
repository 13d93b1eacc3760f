"""Exact nearest-neighbour search at every prefix size in one pass over the data.

Conventions
-----------
* Similarity is the inner product. :func:`exact_search` takes vectors as given (pass
  L2-normalised ones and the inner product *is* the cosine similarity);
  :func:`prefix_neighbors` slices each prefix and then L2-normalises it
  (``truncate(z, m, normalize=True)``), so its scores are cosine similarities.
* Database = train embeddings, queries = test embeddings.
* Results are sorted by decreasing score: ``scores`` is float32 ``(n_queries, k)``,
  ``indices`` int64 ``(n_queries, k)`` rows of the database. Tied scores are ordered by
  increasing database index; which of several items tied at the k-th place is returned is
  the heap's choice.
* One search at the largest ``k`` any evaluator needs; kNN and retrieval then read the first
  columns of the same result.

How (CPU)
---------
Scores are computed block by block (a chunk of queries against a chunk of the database) with
one BLAS matrix product into a reused buffer, and the top ``k`` of each row is kept by FAISS's
heaps (``float_minheap_array_t``, the selection ``IndexFlatIP.search`` uses). For several
prefixes :func:`prefix_neighbors` does *not* search once per prefix: the raw inner products
of prefix ``m_i`` are those of ``m_{i-1}`` plus the products of dims ``m_{i-1}..m_i``
(``addmm`` into the same buffer), scaled per column by the database's prefix inverse norm
(the query's is a per-row constant, applied to the ``k`` kept scores). All prefixes thus
cost one matrix product at the largest prefix plus one scaling and one heap pass each,
instead of a full search each.

Device (``device`` argument, else ``eval.py search.device=auto|cpu|cuda``, see
:func:`use_search_device`)
------------------------------------------------------------------------------------------
* ``cpu``: the CPU search above (FAISS CPU kernels and heaps).
* ``cuda``: FAISS GPU ``IndexFlatIP`` per prefix when the installed FAISS has GPU support and
  sees a GPU (``faiss.get_num_gpus() > 0``); else torch on the GPU: the same cumulative
  per-prefix products, one blocked matmul per (query block, database block) and
  ``torch.topk`` per prefix, merged across blocks, in full float32 (TF32 off). No GPU:
  one-line :class:`MRLError`.
* ``auto`` (default): ``cuda`` when FAISS or torch sees a GPU, else ``cpu``.
The legacy ``use_gpu`` argument wins when given: True = FAISS GPU (error without it),
False = CPU.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator, Sequence

import numpy as np
import torch

from mrl.core.errors import MRLError
from mrl.core.nesting import truncate
from mrl.core.validate import as_matrix, positive_int
from mrl.eval._checks import prefix_dims

#: one line on what to install (``faiss-cpu`` and ``faiss-gpu`` both provide ``faiss``)
FAISS_HINT = (
    "pip install 'matryoshka-rl[cpu]' (faiss-cpu), or 'matryoshka-rl[gpu]' (faiss-gpu) on a "
    "CUDA machine; never both: they provide the same faiss module"
)


def _import_faiss():
    """``faiss``, or a one-line :class:`MRLError` naming the extra to install; warns once
    when both FAISS distributions are installed (one overwrote the other's module)."""
    try:
        import faiss
    except ImportError as e:
        raise MRLError(f"faiss is not installed: {FAISS_HINT}") from e
    from importlib import metadata

    found = []
    for dist in ("faiss-cpu", "faiss-gpu"):
        try:
            found.append(f"{dist} {metadata.version(dist)}")
        except metadata.PackageNotFoundError:
            pass
    if len(found) > 1:
        import logging

        logging.getLogger(__name__).warning(
            "both %s are installed and overwrite each other's faiss module: pip uninstall -y "
            "faiss-cpu faiss-gpu, then %s",
            " and ".join(found),
            FAISS_HINT,
        )
    return faiss


faiss = _import_faiss()

Neighbors = dict[int, tuple[np.ndarray, np.ndarray]]

#: bytes of score buffers one block of the CPU search may hold (two ``q x n`` float32 arrays)
BLOCK_BYTES = 1 << 26
#: from this width on, :func:`exact_search` calls FAISS's own flat kernel (``faiss.knn``):
#: the search is then bound by the matrix product, where FAISS's BLAS measured faster than
#: torch's on this project's CPU (1M x 2048: 34 s vs 50 s); below it, by selecting the top k
#: of many cheap scores, where the blocked search is faster (1M x 16, k=200: 2.5-3.8 s vs 11 s)
FAISS_MIN_DIM = 256
EPS = 1e-12  # as truncate(normalize=True): zero rows stay zero


#: bytes of one score block of the torch GPU search
GPU_BLOCK_BYTES = 1 << 30
SEARCH_DEVICES = ("auto", "cpu", "cuda")
_DEVICE: contextvars.ContextVar[str] = contextvars.ContextVar("mrl_search_device", default="auto")


def check_search_device(spec: str) -> str:
    """``spec`` if it is one of :data:`SEARCH_DEVICES`, else a one-line :class:`MRLError`."""
    if str(spec) not in SEARCH_DEVICES:
        raise MRLError(f"search.device={spec!r}: use auto, cpu or cuda")
    return str(spec)


@contextlib.contextmanager
def use_search_device(spec: str) -> Iterator[str]:
    """Within the block, searches that are given no device use ``spec`` (auto|cpu|cuda)."""
    spec = check_search_device(spec)
    search_backend(spec)  # cuda without a GPU: the error now, before any work
    token = _DEVICE.set(spec)
    try:
        yield spec
    finally:
        _DEVICE.reset(token)


def _cuda_device() -> torch.device:
    return torch.device("cuda")


def search_backend(device: str | None = None, use_gpu: bool | None = None) -> str:
    """The search implementation: ``cpu``, ``faiss-gpu`` or ``torch-cuda`` (module docstring)."""
    if use_gpu is not None:
        return "faiss-gpu" if _resolve_gpu(use_gpu) else "cpu"
    spec = check_search_device(_DEVICE.get() if device is None else device)
    if spec == "cpu":
        return "cpu"
    if faiss_has_gpu():
        return "faiss-gpu"
    if torch.cuda.is_available():
        return "torch-cuda"
    if spec == "cuda":
        raise MRLError(
            "search.device=cuda but neither FAISS nor torch sees a CUDA GPU here; use "
            "search.device=cpu or auto"
        )
    return "cpu"


@contextlib.contextmanager
def _full_fp32() -> Iterator[None]:
    """Exact float32 products on the GPU (no TF32), whatever the process set."""
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(before)


@torch.no_grad()
def torch_search(
    db: torch.Tensor,
    qs: torch.Tensor,
    dims: Sequence[int],
    k: int,
    normalize: bool,
    query_chunk: int = 4096,
    inv_db: list[torch.Tensor] | None = None,
    block_bytes: int | None = None,
) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    """Exact top-``k`` at every prefix of ``dims`` with torch on ``db``'s device (the GPU
    path): cumulative per-prefix products per (query block, database block), top ``k`` per
    block and prefix merged into a running top ``k``. ``normalize``: cosine of the sliced
    then L2-normalised prefixes (``inv_db``: precomputed database inverse prefix norms).
    Returns ``{m: (scores float32, ids int64)}`` on the device, best first (ties unordered).
    """
    block_bytes = block_bytes or GPU_BLOCK_BYTES
    n, nq = len(db), len(qs)
    q_block = max(1, min(query_chunk, nq))
    db_block = min(n, max(k, block_bytes // (4 * q_block)))
    if normalize and inv_db is None:
        inv_db = _inverse_prefix_norms(db, dims)
    out: dict[int, tuple[list, list]] = {m: ([], []) for m in dims}
    with _full_fp32():
        for q0 in range(0, nq, q_block):
            q = qs[q0 : q0 + q_block]
            inv_q = _inverse_prefix_norms(q, dims) if normalize else None
            best: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * len(dims)
            for d0 in range(0, n, db_block):
                x = db[d0 : d0 + db_block]
                s, prev = None, 0
                for i, m in enumerate(dims):
                    part = q[:, prev:m] @ x[:, prev:m].T
                    s = part if s is None else s.add_(part)
                    prev = m
                    c = s * inv_db[i][d0 : d0 + len(x)] if normalize else s
                    v, j = c.topk(min(k, len(x)), dim=1)
                    j = j + d0
                    if best[i] is not None:
                        v, pick = torch.cat([best[i][0], v], 1).topk(k, dim=1)
                        j = torch.cat([best[i][1], j], 1).gather(1, pick)
                    best[i] = (v, j)
            for i, m in enumerate(dims):
                v, j = best[i]
                if normalize:
                    v = v * inv_q[i][:, None]
                out[m][0].append(v)
                out[m][1].append(j)
    return {m: (torch.cat(v), torch.cat(j)) for m, (v, j) in out.items()}


def _torch_prefix_search(
    database: np.ndarray,
    queries: np.ndarray,
    dims: Sequence[int],
    k: int,
    normalize: bool,
    query_chunk: int,
    device: torch.device | None = None,
) -> Neighbors:
    """:func:`torch_search` on ``device`` (default the GPU) for numpy inputs and outputs."""
    device = device or _cuda_device()
    db = torch.from_numpy(database).to(device)
    qs = torch.from_numpy(queries).to(device)
    res = torch_search(db, qs, dims, k, normalize, query_chunk)
    return {
        m: _ties_by_index(v.float().cpu().numpy(), j.long().cpu().numpy())
        for m, (v, j) in res.items()
    }


def faiss_has_gpu() -> bool:
    """True when the installed FAISS was built with GPU support and sees a GPU."""
    return hasattr(faiss, "get_num_gpus") and faiss.get_num_gpus() > 0


def _resolve_gpu(use_gpu: bool | None) -> bool:
    gpu = faiss_has_gpu() if use_gpu is None else bool(use_gpu)
    if gpu and not faiss_has_gpu():
        raise MRLError("use_gpu=True but FAISS sees no GPU; install faiss-gpu or use use_gpu=None")
    return gpu


def flat_ip_index(database: np.ndarray, use_gpu: bool | None = None) -> faiss.Index:
    """An exact inner-product index (``IndexFlatIP``) holding ``database``.

    ``use_gpu``: True forces a GPU index (MRLError if FAISS has none), False forces CPU,
    None uses a GPU when :func:`faiss_has_gpu`.
    """
    database = as_matrix(database, "database")
    index = faiss.IndexFlatIP(database.shape[1])
    if _resolve_gpu(use_gpu):
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


class TopK:
    """Running top-``k`` (largest first) of each of ``q`` rows, fed blocks of columns.

    Wraps FAISS's ``float_minheap_array_t``: ``add(block, first_id)`` offers a C-contiguous
    float32 ``(q, b)`` block whose column ``j`` is database item ``first_id + j``;
    :meth:`result` sorts the heaps and returns ``(scores, ids)`` of shape ``(q, k)``.
    """

    def __init__(self, q: int, k: int):
        self.scores = np.empty((q, k), dtype=np.float32)
        self.ids = np.empty((q, k), dtype=np.int64)
        self.heap = faiss.float_minheap_array_t()
        self.heap.nh, self.heap.k = q, k
        self.heap.val, self.heap.ids = faiss.swig_ptr(self.scores), faiss.swig_ptr(self.ids)
        self.heap.heapify()

    def add(self, block: np.ndarray, first_id: int) -> None:
        q, b = block.shape
        if q != self.heap.nh or not block.flags.c_contiguous or block.dtype != np.float32:
            raise ValueError("TopK.add needs a C-contiguous float32 block with one row per query")
        self.heap.addn(b, faiss.swig_ptr(block), int(first_id), 0, q)

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        self.heap.reorder()
        return self.scores, self.ids


def _ties_by_index(scores: np.ndarray, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    order = np.lexsort((indices, -scores), axis=1)  # ties: lower database index first
    return np.take_along_axis(scores, order, 1), np.take_along_axis(indices, order, 1)


def _inverse_prefix_norms(x: torch.Tensor, dims: Sequence[int]) -> list[torch.Tensor]:
    """``1 / max(||x[:, :m]||, eps)`` for every ``m``, from cumulative block sums of squares."""
    out, sq, prev = [], torch.zeros(len(x), dtype=torch.float64, device=x.device), 0
    for m in dims:
        sq = sq + x[:, prev:m].double().square().sum(1)
        out.append(sq.sqrt().clamp_min(EPS).reciprocal().float())
        prev = m
    return out


def _cpu_prefix_search(
    database: np.ndarray,
    queries: np.ndarray,
    dims: Sequence[int],
    k: int,
    normalize: bool,
    query_chunk: int,
    block_bytes: int | None = None,
) -> Neighbors:
    """Blocked exact search at every prefix in ``dims`` (see the module docstring)."""
    block_bytes = block_bytes or BLOCK_BYTES
    db, qs = torch.from_numpy(database), torch.from_numpy(queries)
    n, nq = len(db), len(qs)
    db_block = min(n, max(k, block_bytes // (8 * min(nq, query_chunk))))
    q_block = max(1, min(query_chunk, nq, block_bytes // (8 * db_block)))
    flat_s = torch.empty(q_block * db_block)
    flat_c = torch.empty(q_block * db_block) if normalize else None
    inv_db = _inverse_prefix_norms(db, dims) if normalize else None
    out = {m: (np.empty((nq, k), np.float32), np.empty((nq, k), np.int64)) for m in dims}
    for q0 in range(0, nq, q_block):
        q = qs[q0 : q0 + q_block]
        inv_q = _inverse_prefix_norms(q, dims) if normalize else None
        heaps = [TopK(len(q), k) for _ in dims]
        for d0 in range(0, n, db_block):
            x = db[d0 : d0 + db_block]
            s = flat_s[: len(q) * len(x)].view(len(q), len(x))
            prev = 0
            for i, m in enumerate(dims):
                if i == 0:
                    torch.mm(q[:, :m], x[:, :m].T, out=s)
                else:
                    s.addmm_(q[:, prev:m], x[:, prev:m].T)
                prev = m
                if normalize:
                    c = flat_c[: s.numel()].view_as(s)
                    torch.mul(s, inv_db[i][d0 : d0 + len(x)], out=c)
                    heaps[i].add(c.numpy(), d0)
                else:
                    heaps[i].add(s.numpy(), d0)
        for i, m in enumerate(dims):
            scores, ids = heaps[i].result()
            if normalize:
                scores *= inv_q[i].numpy()[:, None]
            out[m][0][q0 : q0 + len(q)], out[m][1][q0 : q0 + len(q)] = scores, ids
    return {m: _ties_by_index(*out[m]) for m in dims}


def _check_k(k: int, n: int) -> int:
    k = positive_int(k, "k")
    if k > n:
        raise MRLError(f"k={k} is larger than the database ({n} items); use k <= {n}")
    return k


def exact_search(
    database: np.ndarray,
    queries: np.ndarray,
    k: int,
    use_gpu: bool | None = None,
    query_chunk: int = 4096,
    device: str | None = None,
    check_finite: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-``k`` inner-product search.

    Args:
        database: ``(n, d)`` vectors, expected L2-normalised (then IP = cosine).
        queries: ``(q, d)`` vectors, expected L2-normalised.
        k: neighbours per query, ``1 <= k <= n``.
        use_gpu: True: FAISS GPU ``IndexFlatIP``; False: CPU, with FAISS's flat kernel
            (``faiss.knn``, no copy of the database) from ``FAISS_MIN_DIM`` dims on and the
            blocked search (BLAS products, FAISS heaps) below; None: GPU when FAISS has one.
        query_chunk: at most this many queries per block, bounding the working memory.
        device: ``auto|cpu|cuda`` when ``use_gpu`` is None (default: :func:`use_search_device`'s,
            else ``auto``); ``cuda`` without FAISS GPU searches with torch on the GPU.
        check_finite: False skips the NaN/inf scan of ``database`` (one read of all of it):
            for a database validated once and searched many times.

    Returns:
        ``(scores, indices)``: float32 and int64 arrays of shape ``(q, k)``, best first,
        equal scores by increasing index. Inputs are cast to contiguous float32.
    """
    database = as_matrix(database, "database", check_finite=check_finite)
    queries = as_matrix(queries, "queries")
    if database.shape[1] != queries.shape[1]:
        raise MRLError(
            f"queries have width {queries.shape[1]} but the database has width "
            f"{database.shape[1]}; both must be the same prefix"
        )
    k = _check_k(k, len(database))
    query_chunk = positive_int(query_chunk, "query_chunk")
    backend = search_backend(device, use_gpu)
    if backend == "faiss-gpu":
        index = flat_ip_index(database, True)
        return _ties_by_index(*search_index(index, queries, k, query_chunk))
    d = database.shape[1]
    if backend == "torch-cuda":
        return _torch_prefix_search(database, queries, [d], k, False, query_chunk)[d]
    if d >= FAISS_MIN_DIM:
        scores = np.empty((len(queries), k), dtype=np.float32)
        indices = np.empty((len(queries), k), dtype=np.int64)
        for start in range(0, len(queries), query_chunk):
            stop = start + query_chunk
            scores[start:stop], indices[start:stop] = faiss.knn(
                queries[start:stop], database, k, faiss.METRIC_INNER_PRODUCT
            )
        return _ties_by_index(scores, indices)
    return _cpu_prefix_search(database, queries, [d], k, False, query_chunk)[d]


def prefix_neighbors(
    train_x: np.ndarray,
    test_x: np.ndarray,
    dims: Sequence[int],
    k: int,
    use_gpu: bool | None = None,
    query_chunk: int = 4096,
    device: str | None = None,
) -> Neighbors:
    """Top-``k`` train neighbours of every test item, at every prefix size.

    For each ``m`` in ``dims``: the exact cosine neighbours of ``truncate(., m,
    normalize=True)`` (slice, then L2-normalise) on both sides. On CPU all prefixes come
    from one blocked pass (cumulative inner products, see the module docstring); with
    ``use_gpu`` (or ``device`` ``cuda``/``auto`` with FAISS GPU) each prefix is searched by a
    FAISS GPU index; on ``cuda`` without it, torch does the one-pass search on the GPU.

    Returns:
        ``{m: (scores, indices)}`` with arrays of shape ``(n_test, k)``, keys sorted.
    """
    train_x = as_matrix(train_x, "train_x")
    test_x = as_matrix(test_x, "test_x")
    if train_x.shape[1] != test_x.shape[1]:
        raise MRLError(
            f"test_x has width {test_x.shape[1]} but train_x has width {train_x.shape[1]}"
        )
    dims = prefix_dims(dims, train_x.shape[1])
    k = _check_k(k, len(train_x))
    query_chunk = positive_int(query_chunk, "query_chunk")
    backend = search_backend(device, use_gpu)
    if backend == "torch-cuda":
        return _torch_prefix_search(train_x, test_x, dims, k, True, query_chunk)
    if backend == "faiss-gpu":
        return {
            m: exact_search(
                truncate(train_x, m, normalize=True),
                truncate(test_x, m, normalize=True),
                k,
                use_gpu=True,
                query_chunk=query_chunk,
            )
            for m in dims
        }
    return _cpu_prefix_search(train_x, test_x, dims, k, True, query_chunk)
