"""Matryoshka embeddings in an embedded vector database (LanceDB), and the funnel as a query.

Why LanceDB: it is embedded (a folder of Lance files opened in-process; no server, unlike
Milvus Lite's local server process), stores fixed-size float vectors beside other columns in
one Arrow table, indexes any of them (IVF-PQ, IVF-HNSW-SQ, IVF-flat, with the ``dot``
distance), and answers a batch of query vectors in one call. ``pip install lancedb==0.40.0``
(the ``vectordb`` extra).

Table layout (:func:`export_lancedb`): one row per database item with ``id`` (row number in
the embeddings), ``label``, ``prefix`` (the sliced then L2-normalised ``prefix_dim`` prefix,
float32, indexed) and ``vector`` (the L2-normalised full-width vector, float32).

Funnel query (:class:`LanceFunnel`): the ``keep`` nearest rows by inner product on the
``prefix`` column's index, returned with their ``vector`` column; those are reranked exactly
by the inner product at full width (numpy), best ``k`` kept. Same conventions as
:mod:`mrl.eval.funnel`: cosine of sliced-then-normalised prefixes.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from mrl.core.errors import MRLError
from mrl.core.nesting import truncate
from mrl.core.validate import as_matrix, integer

INDEX_TYPES = ("IVF_PQ", "IVF_HNSW_SQ", "IVF_FLAT")
HINT = "pip install lancedb==0.40.0 (the vectordb extra)"


def _lancedb():
    try:
        import lancedb
    except ImportError as e:
        raise MRLError(f"LanceDB is not installed: {HINT}") from e
    return lancedb


def _vectors(x: np.ndarray):
    import pyarrow as pa

    x = np.ascontiguousarray(x, dtype=np.float32)
    return pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), x.shape[1])


def _has_table(db: Any, table: str) -> bool:
    try:
        db.open_table(table)
    except Exception:  # noqa: BLE001 - LanceDB says "not found" with several exception types
        return False
    return True


def export_lancedb(
    path: str | os.PathLike,
    database: np.ndarray,
    labels: np.ndarray | None,
    prefix_dim: int,
    *,
    table: str = "embeddings",
    index_type: str = "IVF_PQ",
    num_partitions: int | None = None,
    num_sub_vectors: int | None = None,
    normalized: bool = False,
    chunk: int = 100_000,
    overwrite: bool = False,
) -> Any:
    """Write ``database`` into LanceDB at ``path`` (a new table ``table``; an existing one is
    replaced only with ``overwrite=True``) and index its ``prefix`` column; returns the table.

    ``database``: ``(N, width)`` raw embeddings (``normalized=True``: already L2-normalised
    full vectors). ``index_type``: IVF_PQ (``num_sub_vectors`` default ``prefix_dim // 4``),
    IVF_HNSW_SQ or IVF_FLAT; ``num_partitions`` default ``~sqrt(N)``.
    """
    import pyarrow as pa

    lancedb = _lancedb()
    n, width = database.shape
    prefix_dim = integer(prefix_dim, "prefix_dim", min=1, max=width, hint="(the width)")
    if index_type not in INDEX_TYPES:
        raise MRLError(f"index_type={index_type!r}: use one of {list(INDEX_TYPES)}")
    parts = num_partitions or max(1, int(np.sqrt(n)))
    if not 1 <= parts <= n:
        raise MRLError(f"num_partitions={parts} must be in 1..{n} (the database size)")
    subs = num_sub_vectors or max(1, prefix_dim // 4)
    if prefix_dim % subs:
        raise MRLError(f"num_sub_vectors={subs} must divide prefix_dim={prefix_dim}")
    y = np.full(n, -1, np.int64) if labels is None else np.asarray(labels, np.int64)

    def batches():
        for s in range(0, n, chunk):
            x = np.asarray(database[s : s + chunk], dtype=np.float32)
            full = x if normalized else truncate(x, width, normalize=True)
            yield pa.record_batch(
                {
                    "id": pa.array(np.arange(s, s + len(x), dtype=np.int64)),
                    "label": pa.array(y[s : s + len(x)]),
                    "prefix": _vectors(truncate(full, prefix_dim, normalize=True)),
                    "vector": _vectors(full),
                }
            )

    schema = next(batches()).schema
    db = lancedb.connect(str(path))
    if not overwrite and _has_table(db, table):
        raise MRLError(
            f"{path} already holds a LanceDB table {table!r}; pass overwrite=True to replace "
            "it, or export to another folder or table"
        )
    tbl = db.create_table(
        table,
        data=pa.RecordBatchReader.from_batches(schema, batches()),
        mode="overwrite" if overwrite else "create",
    )
    from lancedb.index import IvfFlat, IvfHnswSq, IvfPq

    config = {
        "IVF_PQ": lambda: IvfPq(distance_type="dot", num_partitions=parts, num_sub_vectors=subs),
        "IVF_HNSW_SQ": lambda: IvfHnswSq(distance_type="dot", num_partitions=parts),
        "IVF_FLAT": lambda: IvfFlat(distance_type="dot", num_partitions=parts),
    }[index_type]()
    tbl.create_index("prefix", config=config)
    return tbl


def export_run_embeddings(
    embeddings: str | os.PathLike, out: str | os.PathLike, prefix_dim: int, **kwargs: Any
) -> Any:
    """Export the database (train) split of an embedding cache / file
    (:func:`mrl.eval.cache.load_embeddings`) into LanceDB at ``out``."""
    from mrl.eval.cache import load_embeddings

    arrays = load_embeddings(embeddings)
    return export_lancedb(out, arrays["train_x"], arrays["train_y"], prefix_dim, **kwargs)


class LanceFunnel:
    """Shortlist ``keep`` on the ``prefix`` index, rerank at full width, return ``k``.

    ``nprobes``: IVF partitions searched; ``refine_factor``: LanceDB re-scores
    ``keep * refine_factor`` PQ candidates with the stored prefix first (None: off).
    """

    def __init__(
        self,
        table: Any,
        keep: int,
        k: int = 10,
        nprobes: int = 16,
        refine_factor: int | None = None,
        ef: int | None = None,
    ) -> None:
        self.table, self.k = table, integer(k, "k", min=1)
        self.keep = integer(keep, "keep", min=self.k, hint=f"(a shortlist >= k={self.k})")
        self.nprobes, self.refine_factor, self.ef = nprobes, refine_factor, ef
        schema = table.schema
        self.prefix_dim = schema.field("prefix").type.list_size
        self.width = schema.field("vector").type.list_size
        self.loaded = False
        self.build_seconds = 0.0

    def describe(self) -> str:
        idx = self.index_info()
        kind = getattr(idx, "index_type", "?")
        return (
            f"lancedb/{kind}@d{self.prefix_dim}[np{self.nprobes}"
            f"{f',rf{self.refine_factor}' if self.refine_factor else ''}]>{self.keep}"
            f" -> rerank@d{self.width}>{self.k}"
        )

    def index_info(self) -> Any:
        idx = [i for i in self.table.list_indices() if "prefix" in i.columns]
        return idx[0] if idx else None

    def bytes_per_vector(self) -> float:
        """The prefix index's bytes (LanceDB's own count) per row, plus the float32
        ``prefix`` and ``vector`` columns (the rerank reads the latter)."""
        idx = self.index_info()
        size = getattr(idx, "size_bytes", None) or 0
        rows = max(1, self.table.count_rows())
        return size / rows + 4.0 * (self.width + self.prefix_dim)

    def as_dict(self) -> list[dict[str, Any]]:
        return [{"index": "lancedb"}, {"index": "flat"}]

    def search(self, queries: np.ndarray, batch: int = 100) -> tuple[np.ndarray, np.ndarray]:
        """``(scores, ids)`` ``(q, k)``: exact full-width inner products, best first; the
        queries go to LanceDB ``batch`` at a time (each brings back ``keep`` full vectors)."""
        queries = as_matrix(queries, "queries")
        if queries.shape[1] != self.width:
            raise MRLError(f"queries have width {queries.shape[1]}; the table has {self.width}")
        parts = [self._search(queries[s : s + batch]) for s in range(0, len(queries), batch)]
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])

    def _search(self, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        full = truncate(queries, self.width, normalize=True)
        qp = truncate(full, self.prefix_dim, normalize=True)
        b = (
            self.table.search(list(qp), vector_column_name="prefix")
            .distance_type("dot")
            .limit(self.keep)
            .nprobes(self.nprobes)
        )
        if self.refine_factor:
            b = b.refine_factor(self.refine_factor)
        if self.ef:
            b = b.ef(self.ef)
        res = b.select(["id", "vector"]).to_arrow()
        qi = res.column("query_index").to_numpy()
        ids = res.column("id").to_numpy()
        vec = res.column("vector").combine_chunks().flatten().to_numpy().reshape(-1, self.width)
        scores = np.einsum("rd,rd->r", vec, full[qi])
        out_s = np.full((len(queries), self.k), -np.inf, np.float32)
        out_i = np.full((len(queries), self.k), -1, np.int64)
        order = np.lexsort((-scores, qi))  # by query, then best score first
        qi, ids, scores = qi[order], ids[order], scores[order]
        starts = np.searchsorted(qi, np.arange(len(queries)))
        ends = np.searchsorted(qi, np.arange(len(queries)), side="right")
        for i, (s, e) in enumerate(zip(starts, ends, strict=True)):
            m = min(self.k, e - s)
            out_s[i, :m], out_i[i, :m] = scores[s : s + m], ids[s : s + m]
        return out_s, out_i


def lance_funnel(
    folder: str | os.PathLike,
    key: str,
    full: np.ndarray,
    labels: np.ndarray | None,
    prefix_dim: int,
    keep: int,
    k: int = 10,
    **options: Any,
) -> LanceFunnel:
    """A :class:`LanceFunnel` over ``<folder>/lance-<key>`` (the database content's key),
    exported from ``full`` (the L2-normalised full-width vectors) when not there yet."""
    lancedb = _lancedb()
    index_opts = {
        k2: options.pop(k2)
        for k2 in ("index_type", "num_partitions", "num_sub_vectors")
        if k2 in options
    }
    tail = "-".join(str(v) for v in index_opts.values())
    path = Path(folder) / f"lance-{key}-d{prefix_dim}-{tail}"
    t0 = time.perf_counter()
    loaded = False
    tbl = None
    if path.is_dir():
        try:
            tbl = lancedb.connect(str(path)).open_table("embeddings")
            loaded = any("prefix" in i.columns for i in tbl.list_indices())
        except Exception:  # noqa: BLE001 - a half-written folder: rebuild
            tbl = None
    if tbl is None or not loaded:
        tbl = export_lancedb(  # the cache's own folder: a stale table is rebuilt
            path, full, labels, prefix_dim, normalized=True, overwrite=True, **index_opts
        )
    f = LanceFunnel(tbl, keep, k, **options)
    f.loaded, f.build_seconds = loaded, time.perf_counter() - t0
    return f
