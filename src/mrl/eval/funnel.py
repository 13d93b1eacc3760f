"""Funnel retrieval over Matryoshka prefixes: a shortlist index, then exact reranks.

Stages
------
A funnel is a list of :class:`Stage` ``(dim, keep, precision, index, ...)``:

* Stage 1 searches the whole database with an *index* built on the sliced-then-L2-normalised
  ``dim`` prefix (``d_s``) at a *precision*, and keeps the best ``keep`` ids (the shortlist).
* Every later stage re-scores the previous survivors exactly (float32 inner product of the
  normalised ``dim`` prefixes, gathered by id inside FAISS,
  :func:`mrl.eval.adaptive.rerank_scores`) and keeps its best ``keep``. The last stage is the
  answer (``keep >= k``, ``k`` returned); reranks must be ``flat``/``float32``.
  The database's prefixes are checked (shape, finite) once by :meth:`Funnel.build`; a search
  reads only the shortlist index and the candidates' rows, never the whole store.

Index types (``index``) and the precisions each takes:

* ``flat``: an exhaustive scan. ``float32``: the one-pass engine
  (:func:`mrl.eval.search.exact_search`); ``float16`` / ``int8``: FAISS
  ``IndexScalarQuantizer`` (fp16, or 8 bits per dim with per-dim ranges trained on the
  database); ``binary``: one sign bit per dim (``x > 0``), FAISS ``IndexBinaryFlat``, ranked
  by Hamming distance (``dim`` a multiple of 8).
* ``hnsw``: FAISS ``IndexHNSWFlat`` / ``IndexHNSWSQ`` / ``IndexBinaryHNSW`` (``hnsw_m`` links,
  ``ef_search = max(ef_search, keep)``).
* ``ivf`` (AdANNS-IVF): k-means with ``nlist`` centroids on the ``d_c`` prefix (clustering
  prefix, default ``dim``); every vector goes to the list of its nearest ``d_c`` centroid; a
  query probes the ``nprobe`` lists nearest to its ``d_c`` prefix and scans them at the ``d_s``
  = ``dim`` prefix (``float32``: ``IndexIVFFlat``; ``float16``/``int8``:
  ``IndexIVFScalarQuantizer``, not by residual). With ``d_c == dim`` this is a plain IVF.
* ``ivfpq`` (AdANNS-IVF with product-quantised lists): as ``ivf`` with ``IndexIVFPQ``
  (``pq_m`` sub-quantizers of ``nbits`` bits on the residuals to the lists' ``d_s`` means).
* ``opq`` (AdANNS-OPQ): ``faiss.index_factory("OPQ{pq_m},IVF{nlist},PQ{pq_m}x{nbits}np")`` on the
  ``dim`` prefix (``nlist=0``: ``OPQ{pq_m},PQ{pq_m}x{nbits}np``, an exhaustive PQ scan); its own
  clustering (``d_c`` must be ``dim``). Precision ``pq`` for both PQ types.

Bytes per vector (:meth:`Funnel.bytes_per_vector`): the shortlist index's per-vector storage
(codes, plus 8 B of id per vector in IVF lists and ``2 * hnsw_m`` 4-byte links in HNSW's base
layer; centroids and codebooks are per index and left out) plus ``4 * dim`` for every
distinct rerank prefix stored as float32.

Cache
-----
FAISS indexes are written to ``<cache_dir>/funnel-<key>/`` where ``key`` is a sha256 of the
database's *content* (:func:`content_key`) and the file name spells the stage's parameters
and the FAISS version, so changed embeddings never load an old index; other ``funnel-*``
folders in ``cache_dir`` (stale contents) are removed when a new one is written.
"""

from __future__ import annotations

import hashlib
import math
import os
import shutil
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

import numpy as np

from mrl.core.errors import MRLError
from mrl.core.nesting import truncate
from mrl.core.validate import as_matrix, is_int
from mrl.eval.search import exact_search, faiss, faiss_has_gpu, search_backend

INDEXES = ("flat", "hnsw", "ivf", "ivfpq", "opq")
PRECISIONS = ("float32", "float16", "int8", "binary", "pq")
#: precisions each index type accepts (the first is its default)
SUPPORTED: dict[str, tuple[str, ...]] = {
    "flat": ("float32", "float16", "int8", "binary"),
    "hnsw": ("float32", "float16", "int8", "binary"),
    "ivf": ("float32", "float16", "int8"),
    "ivfpq": ("pq",),
    "opq": ("pq",),
}
_SQ = {"float16": "QT_fp16", "int8": "QT_8bit"}
#: rows used to train k-means, scalar and product quantizers
TRAIN_ROWS = 100_000
#: PQ / OPQ training: k-means iterations per sub-quantizer, rows, OPQ alternations (FAISS's
#: defaults, 25 / 65536 / 50 with 40 iterations first, take minutes on 2 cores)
PQ_NITER, PQ_TRAIN_ROWS, OPQ_NITER = 10, 10_000, 5


@dataclass(frozen=True)
class Stage:
    """One funnel stage; see the module docstring for the meaning of every field."""

    dim: int
    keep: int
    precision: str | None = None  # None: the index type's default
    index: str = "flat"
    d_c: int | None = None  # ivf / ivfpq clustering prefix (default: dim)
    nlist: int | None = None  # ivf / ivfpq / opq lists (default: ~4 sqrt(N); opq 0 = no IVF)
    nprobe: int = 16
    hnsw_m: int = 32
    ef_search: int = 64
    ef_construction: int = 40
    pq_m: int | None = None  # sub-quantizers (default: dim // 4)
    nbits: int = 8

    @property
    def prec(self) -> str:
        return self.precision or SUPPORTED.get(self.index, ("float32",))[0]

    def label(self) -> str:
        """Short human name, e.g. ``ivf/float32@d64[dc16,nl1024,np16]>200``."""
        extra = []
        if self.index in ("ivf", "ivfpq") and (self.d_c or self.dim) != self.dim:
            extra.append(f"dc{self.d_c}")
        if self.index in ("ivf", "ivfpq", "opq"):
            extra += [f"nl{self.nlist}", f"np{self.nprobe}"]
        if self.index in ("ivfpq", "opq"):
            extra.append(f"pq{self.pq_m}x{self.nbits}")
        if self.index == "hnsw":
            extra += [f"M{self.hnsw_m}", f"ef{max(self.ef_search, self.keep)}"]
        tail = f"[{','.join(extra)}]" if extra else ""
        return f"{self.index}/{self.prec}@d{self.dim}{tail}>{self.keep}"

    def cache_name(self) -> str:
        """File stem of the stage's index: every build parameter, and the FAISS version."""
        build = {f.name: getattr(self, f.name) for f in fields(self)}
        for runtime in ("keep", "nprobe", "ef_search"):
            build.pop(runtime)
        build["precision"] = self.prec
        text = ",".join(f"{k}={v}" for k, v in sorted(build.items()))
        digest = hashlib.sha256(text.encode()).hexdigest()[:12]
        return f"{self.index}-{self.prec}-d{self.dim}-{digest}-faiss{faiss.__version__}"


StageSpec = Stage | Mapping[str, Any] | Sequence[Any]


def as_stage(spec: StageSpec, i: int = 0) -> Stage:
    """A :class:`Stage` from a Stage, a mapping of its fields, or ``(dim, keep[, precision[,
    index]])``."""
    if isinstance(spec, Stage):
        return spec
    if isinstance(spec, Mapping):
        spec = dict(spec)
        names = {f.name for f in fields(Stage)}
        bad = sorted(set(spec) - names)
        if bad:
            raise MRLError(
                f"funnel stage {i + 1}: unknown key {bad[0]!r}; use some of {sorted(names)}"
            )
        if "dim" not in spec or "keep" not in spec:
            raise MRLError(f"funnel stage {i + 1}={spec}: give at least dim and keep")
        return Stage(**spec)
    if isinstance(spec, (str, bytes)) or not isinstance(spec, Sequence) or not 2 <= len(spec) <= 4:
        raise MRLError(
            f"funnel stage {i + 1}={spec!r}: give (dim, keep[, precision[, index]]) or "
            "{dim: .., keep: .., precision: .., index: ..}"
        )
    return Stage(*spec)


def default_nlist(n: int) -> int:
    """``~4 sqrt(N)`` lists, at most ``N / 39`` (FAISS's minimum of 39 points per centroid)."""
    return max(1, min(int(4 * math.sqrt(n)), n // 39))


def check_funnel(stages: Sequence[StageSpec], width: int, n: int, k: int) -> list[Stage]:
    """Validated stages with defaults filled in; a one-line :class:`MRLError` otherwise."""
    stages = [as_stage(s, i) for i, s in enumerate(stages or [])]
    if not stages:
        raise MRLError(
            "funnel is empty; give stages such as [(16, 200), (2048, 10)] or "
            "[{dim: 64, keep: 200, precision: binary}, {dim: 2048, keep: 10}]"
        )
    out = []
    for i, s in enumerate(stages):
        where = f"funnel stage {i + 1} ({s.index})"
        for name in ("dim", "keep", "nprobe", "hnsw_m", "ef_search", "ef_construction", "nbits"):
            v = getattr(s, name)
            if not is_int(v) or v < 1:
                raise MRLError(f"{where}: {name}={v!r} must be a positive integer")
        if s.index not in INDEXES:
            raise MRLError(
                f"{where}: index={s.index!r} is not an index type; use one of {list(INDEXES)}"
            )
        if s.prec not in SUPPORTED[s.index]:
            raise MRLError(
                f"{where}: precision={s.prec!r} is not available; use one of {list(SUPPORTED[s.index])}"
            )
        if s.dim > width:
            name = "dim (d_s)" if s.index in ("ivf", "ivfpq") else "dim"
            raise MRLError(
                f"{where}: {name} {s.dim} exceeds the embedding width {width}; use <= {width}"
            )
        if i > 0 and (s.index != "flat" or s.prec != "float32"):
            raise MRLError(
                f"{where}: stage {i + 1} reranks the shortlist and must be flat/float32 "
                f"(got {s.index}/{s.prec}); only stage 1 uses an index"
            )
        if s.prec == "binary" and s.dim % 8:
            raise MRLError(
                f"{where}: binary codes need dim % 8 == 0 (got dim={s.dim}); use {s.dim // 8 * 8 or 8}"
            )
        if s.index in ("ivf", "ivfpq", "opq"):
            d_c = s.dim if s.d_c is None else s.d_c
            if not is_int(d_c) or not 1 <= d_c <= width:
                raise MRLError(f"{where}: d_c={d_c!r} must be an integer in 1..{width} (the width)")
            if s.index == "opq" and d_c != s.dim:
                raise MRLError(
                    f"{where}: opq clusters on its own input: d_c={d_c} must equal dim={s.dim}"
                )
            nlist = (
                s.nlist if s.nlist is not None else (0 if s.index == "opq" else default_nlist(n))
            )
            lo = 0 if s.index == "opq" else 1
            if not is_int(nlist) or nlist < lo:
                raise MRLError(f"{where}: nlist={nlist!r} must be an integer >= {lo}")
            if nlist > n:
                raise MRLError(
                    f"{where}: nlist={nlist} exceeds the database size {n}; use <= {n} "
                    f"(FAISS wants >= 39 points per list: <= {max(1, n // 39)})"
                )
            if nlist and s.nprobe > nlist:
                raise MRLError(f"{where}: nprobe={s.nprobe} exceeds nlist={nlist}; use <= {nlist}")
            s = replace(s, d_c=d_c, nlist=nlist)
        if s.index in ("ivfpq", "opq"):
            pq_m = s.pq_m if s.pq_m is not None else max(1, s.dim // 4)
            if not is_int(pq_m) or pq_m < 1 or s.dim % pq_m:
                raise MRLError(f"{where}: pq_m={pq_m!r} must divide dim={s.dim}")
            if 2**s.nbits > n:
                raise MRLError(
                    f"{where}: nbits={s.nbits} needs >= {2**s.nbits} database rows to train; "
                    f"the database has {n}"
                )
            s = replace(s, pq_m=pq_m)
        out.append(s)
    keeps = [s.keep for s in out]
    if keeps[0] > n:
        raise MRLError(
            f"funnel={[(s.dim, s.keep) for s in out]}: keeps {keeps[0]} but the database has "
            f"{n} items; use <= {n}"
        )
    if any(b > a for a, b in zip(keeps, keeps[1:], strict=False)) or keeps[-1] < k:
        raise MRLError(
            f"funnel={[(s.dim, s.keep) for s in out]}: keep counts must not increase and the "
            f"last must be >= k={k} (a shortlist shorter than k cannot return k results)"
        )
    return out


# ----------------------------------------------------------------------------- content key
def content_key(arrays: Iterable[np.ndarray]) -> str:
    """sha256 (16 hex digits) of the arrays' shapes, dtypes and every byte, read in blocks."""
    h = hashlib.sha256()
    for a in arrays:
        a = np.asarray(a)
        h.update(f"{a.shape}{a.dtype.str}".encode())
        flat = a.reshape(len(a), -1) if a.ndim else a.reshape(1, 1)
        step = max(1, (64 << 20) // max(1, flat[0].nbytes))
        for start in range(0, len(flat), step):
            h.update(np.ascontiguousarray(flat[start : start + step]).data)
    return h.hexdigest()[:16]


class IndexCache:
    """``<folder>/funnel-<key>/``: FAISS indexes of one database content (module docstring)."""

    def __init__(self, folder: str | os.PathLike, key: str) -> None:
        self.root, self.key = Path(folder), key
        self.dir = self.root / f"funnel-{key}"

    def path(self, name: str) -> Path:
        return self.dir / f"{name}.faiss"

    def load(self, name: str, binary: bool = False):
        p = self.path(name)
        if not p.is_file():
            return None
        try:
            return (faiss.read_index_binary if binary else faiss.read_index)(str(p))
        except RuntimeError:
            return None  # truncated / foreign file: rebuild

    def save(self, name: str, index, binary: bool = False) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        for stale in self.root.glob("funnel-*"):
            if stale != self.dir and stale.is_dir():
                shutil.rmtree(stale, ignore_errors=True)
        p = self.path(name)
        tmp = p.with_name(f".{p.name}.{os.getpid()}.tmp")
        (faiss.write_index_binary if binary else faiss.write_index)(index, str(tmp))
        tmp.replace(p)


# ----------------------------------------------------------------------------- shortlists
def _train_rows(x: np.ndarray, seed: int = 0, rows: int = TRAIN_ROWS) -> np.ndarray:
    if len(x) <= rows:
        return x
    rows = np.sort(np.random.default_rng(seed).choice(len(x), rows, replace=False))
    return np.ascontiguousarray(x[rows])


def _bits(x: np.ndarray) -> np.ndarray:
    return np.packbits(x > 0, axis=-1)


class Shortlist:
    """Stage 1: ``search(prefix) -> ids (q, keep)`` over the whole database."""

    def __init__(self, stage: Stage, n: int) -> None:
        self.stage, self.n = stage, n
        self.indexes: dict[str, Any] = {}
        self.device = "cpu"

    # subclasses: build(prefix, cache), search(prefix), bytes_per_vector()
    def dims(self) -> set[int]:
        return {self.stage.dim}

    def _cached(self, cache: IndexCache | None, name: str, make: Callable[[], Any], binary=False):
        """``(index, loaded)``: the cached index, else ``make()`` (then saved)."""
        if cache is not None:
            got = cache.load(name, binary)
            if got is not None:
                return got, True
        index = make()
        if cache is not None:
            cache.save(name, index, binary)
        return index, False

    def to_gpu(self) -> None:
        """Move the FAISS indexes onto the GPU (FAISS GPU only)."""
        if self.stage.index == "hnsw":
            raise MRLError(
                "index=hnsw has no FAISS GPU version; use search.device=cpu, or ivf/flat"
            )
        if not faiss_has_gpu():
            raise MRLError(
                f"index={self.stage.index} on the GPU needs FAISS GPU (faiss-gpu); use "
                "search.device=cpu, or flat/float32 stages (torch on the GPU)"
            )
        for name, index in self.indexes.items():
            if isinstance(index, faiss.IndexBinary):
                self.indexes[name] = faiss.index_binary_cpu_to_gpu_multiple(
                    faiss.StandardGpuResources(), [0], index
                )
            else:
                self.indexes[name] = faiss.index_cpu_to_all_gpus(index)
        self.device = "cuda"


class FlatFloat(Shortlist):
    """``flat/float32``: exact search over the normalised prefix (no FAISS index)."""

    def build(self, prefix, cache):
        self.x = as_matrix(prefix(self.stage.dim), f"the database's {self.stage.dim}-d prefix")
        return False

    def search(self, prefix):
        q, keep = prefix(self.stage.dim), self.stage.keep
        return exact_search(self.x, q, keep, device=self.device, check_finite=False)[1]

    def to_gpu(self) -> None:
        self.device = "cuda"

    def bytes_per_vector(self) -> float:
        return 4.0 * self.stage.dim


class FaissShortlist(Shortlist):
    """Every index type held in one FAISS index (flat SQ/binary, hnsw, opq)."""

    def make(self, x: np.ndarray):
        s, d = self.stage, self.stage.dim
        ip = faiss.METRIC_INNER_PRODUCT
        if s.prec == "binary":
            index = (
                faiss.IndexBinaryFlat(d)
                if s.index == "flat"
                else faiss.IndexBinaryHNSW(d, s.hnsw_m)
            )
            if s.index == "hnsw":
                index.hnsw.efConstruction = s.ef_construction
            index.add(_bits(x))
            return index
        if s.index == "flat":
            index = faiss.IndexScalarQuantizer(d, getattr(faiss.ScalarQuantizer, _SQ[s.prec]), ip)
        elif s.index == "hnsw" and s.prec == "float32":
            index = faiss.IndexHNSWFlat(d, s.hnsw_m, ip)
        elif s.index == "hnsw":
            index = faiss.IndexHNSWSQ(d, getattr(faiss.ScalarQuantizer, _SQ[s.prec]), s.hnsw_m, ip)
        else:  # opq
            ivf = f"IVF{s.nlist}," if s.nlist else ""
            index = faiss.index_factory(d, f"OPQ{s.pq_m},{ivf}PQ{s.pq_m}x{s.nbits}np", ip)
            opq = faiss.downcast_VectorTransform(index.chain.at(0))
            opq.niter, opq.niter_pq_0, opq.max_train_points = OPQ_NITER, PQ_NITER, PQ_TRAIN_ROWS
            faiss.downcast_index(index.index).pq.cp.niter = PQ_NITER  # IndexIVFPQ or IndexPQ
        if s.index == "hnsw":
            index.hnsw.efConstruction = s.ef_construction
        if not index.is_trained:
            index.train(_train_rows(x, rows=PQ_TRAIN_ROWS if s.index == "opq" else TRAIN_ROWS))
        index.add(x)
        return index

    def build(self, prefix, cache):
        binary = self.stage.prec == "binary"
        index, loaded = self._cached(
            cache, self.stage.cache_name(), lambda: self.make(prefix(self.stage.dim)), binary
        )
        self.indexes["main"] = index
        return loaded

    def search(self, prefix):
        s, index = self.stage, self.indexes["main"]
        q = prefix(s.dim)
        if s.prec == "binary":
            q = _bits(q)
        if s.index == "hnsw":
            index.hnsw.efSearch = max(s.ef_search, s.keep)
        elif s.index == "opq" and s.nlist:
            faiss.extract_index_ivf(index).nprobe = s.nprobe
        return index.search(q, s.keep)[1]

    def bytes_per_vector(self) -> float:
        s = self.stage
        code = {"binary": s.dim / 8, "float16": 2 * s.dim, "int8": s.dim, "float32": 4 * s.dim}
        if s.index == "opq":
            return s.pq_m * s.nbits / 8 + (8 if s.nlist else 0)
        return code[s.prec] + (8 * s.hnsw_m if s.index == "hnsw" else 0)


class AdannsIVF(Shortlist):
    """``ivf`` / ``ivfpq``: lists from k-means on the ``d_c`` prefix, scanned at ``d_s``."""

    def dims(self) -> set[int]:
        return {self.stage.dim, self.stage.d_c}

    def make_coarse(self, x_c: np.ndarray):
        s = self.stage
        km = faiss.Kmeans(s.d_c, s.nlist, niter=20, spherical=True, seed=1234, verbose=False)
        km.train(_train_rows(x_c))
        coarse = faiss.IndexFlatIP(s.d_c)
        coarse.add(km.centroids)
        return coarse

    def make_ivf(self, x_s: np.ndarray, x_c: np.ndarray, coarse):
        import torch

        s = self.stage
        assign = coarse.search(x_c, 1)[1][:, 0]
        # the lists' means at the search prefix: the residual codes' reference points
        sums = torch.zeros(s.nlist, s.dim, dtype=torch.float64)
        sums.index_add_(0, torch.from_numpy(assign), torch.from_numpy(x_s).double())
        count = np.bincount(assign, minlength=s.nlist).clip(1)[:, None]
        centroids_s = (sums.numpy() / count).astype(np.float32)
        quantizer = faiss.IndexFlatIP(s.dim)
        quantizer.add(centroids_s)
        ip = faiss.METRIC_INNER_PRODUCT
        if s.index == "ivfpq":
            index = faiss.IndexIVFPQ(quantizer, s.dim, s.nlist, s.pq_m, s.nbits, ip)
        elif s.prec == "float32":
            index = faiss.IndexIVFFlat(quantizer, s.dim, s.nlist, ip)
        else:
            qt = getattr(faiss.ScalarQuantizer, _SQ[s.prec])
            index = faiss.IndexIVFScalarQuantizer(quantizer, s.dim, s.nlist, qt, ip, False)
        if s.index == "ivfpq":
            index.pq.cp.niter = PQ_NITER
        if not index.is_trained:  # the quantizer is full: trains the codes only
            index.train(_train_rows(x_s, rows=PQ_TRAIN_ROWS if s.index == "ivfpq" else TRAIN_ROWS))
        for start in range(0, len(x_s), 100_000):
            stop = start + 100_000
            a = np.ascontiguousarray(assign[start:stop], dtype=np.int64)
            index.add_core(
                len(a),
                faiss.swig_ptr(np.ascontiguousarray(x_s[start:stop])),
                None,
                faiss.swig_ptr(a),
            )
        return index

    def build(self, prefix, cache):
        s = self.stage
        coarse, l1 = self._cached(
            cache, f"{s.cache_name()}-coarse", lambda: self.make_coarse(prefix(s.d_c))
        )
        index, l2 = self._cached(
            cache, s.cache_name(), lambda: self.make_ivf(prefix(s.dim), prefix(s.d_c), coarse)
        )
        self.indexes = {"coarse": coarse, "ivf": index}
        self.centroids_s = faiss.extract_index_ivf(index).quantizer.reconstruct_n(0, s.nlist)
        return l1 and l2

    def search(self, prefix):
        s = self.stage
        q_s, q_c = prefix(s.dim), prefix(s.d_c)
        lists = self.indexes["coarse"].search(q_c, s.nprobe)[1]
        ivf = self.indexes["ivf"]
        ivf.nprobe = s.nprobe
        # IVF-PQ scores by residual: <q, c_list> + <q, r>; give it the first term
        coarse_dis = np.einsum("qd,qpd->qp", q_s, self.centroids_s[lists.clip(0)]).astype(
            np.float32
        )
        return ivf.search_preassigned(q_s, s.keep, lists, coarse_dis)[1]

    def bytes_per_vector(self) -> float:
        s = self.stage
        if s.index == "ivfpq":
            return s.pq_m * s.nbits / 8 + 8
        return {"float32": 4 * s.dim, "float16": 2 * s.dim, "int8": s.dim}[s.prec] + 8


def make_shortlist(stage: Stage, n: int) -> Shortlist:
    if stage.index == "flat" and stage.prec == "float32":
        return FlatFloat(stage, n)
    if stage.index in ("ivf", "ivfpq"):
        return AdannsIVF(stage, n)
    return FaissShortlist(stage, n)


# ----------------------------------------------------------------------------- funnel
class Funnel:
    """A validated funnel: :meth:`build` once (indexes cached by content), then :meth:`search`.

    Args:
        stages: :class:`Stage` specs (see :func:`as_stage`); the last keeps ``>= k``.
        k: results returned.
        device: ``auto|cpu|cuda`` as :func:`mrl.eval.search.search_backend` (GPU: FAISS GPU
            indexes; flat/float32 stages also with torch). Reranks run on the CPU.
    """

    def __init__(self, stages: Sequence[StageSpec], k: int = 10, device: str | None = "cpu"):
        self.specs, self.k, self.device = list(stages), int(k), device
        self.stages: list[Stage] = []
        self.build_seconds = 0.0
        self.loaded = False

    def build(
        self,
        database: np.ndarray | None = None,
        *,
        prefixes: Mapping[int, np.ndarray] | Callable[[int], np.ndarray] | None = None,
        n: int | None = None,
        width: int | None = None,
        cache_dir: str | os.PathLike | None = None,
        key: str | None = None,
    ) -> Funnel:
        """Build the shortlist index and the rerank stores.

        Either ``database`` (raw ``(N, width)`` embeddings; sliced and normalised here) or
        ``prefixes`` (``{dim: normalised (N, dim) float32}`` for every dim the funnel needs,
        or a function ``dim -> that array``, called as needed; with ``n`` and ``width``). ``cache_dir``: where indexes are cached, keyed by ``key``
        (default: :func:`content_key` of ``database``, required with ``prefixes``).
        """
        if database is not None:
            database = as_matrix(database, "database")
            n, width = database.shape
        elif prefixes is None or n is None or width is None:
            raise MRLError("Funnel.build: give database, or prefixes with n and width")
        self.n, self.width = int(n), int(width)
        self.backend = search_backend(self.device)
        self.stages = check_funnel(self.specs, self.width, self.n, self.k)
        t0 = time.perf_counter()
        made: dict[int, np.ndarray] = {} if callable(prefixes) else dict(prefixes or {})

        def prefix(d: int) -> np.ndarray:
            if callable(prefixes):
                return prefixes(d)
            if d not in made:
                if database is None:
                    raise MRLError(f"Funnel.build: prefixes lack dim {d}")
                made[d] = truncate(database, d, normalize=True)
            return made[d]

        cache = None
        if cache_dir is not None:
            if key is None:
                if database is None:
                    raise MRLError("Funnel.build: prefixes with a cache_dir need a content key")
                key = content_key([database])
            cache = IndexCache(cache_dir, key)
        self.first = make_shortlist(self.stages[0], self.n)
        self.loaded = bool(self.first.build(prefix, cache))
        # validated once here: searches skip the scan of the stores (check_finite=False)
        self.stores = {
            s.dim: as_matrix(prefix(s.dim), f"the database's {s.dim}-d prefix")
            for s in self.stages[1:]
        }
        for d, store in self.stores.items():
            if store.shape != (self.n, d):
                raise MRLError(
                    f"Funnel.build: the {d}-d prefix has shape {store.shape}; "
                    f"expected ({self.n}, {d})"
                )
        if self.backend != "cpu":
            self.first.to_gpu()
        self.build_seconds = time.perf_counter() - t0
        return self

    def bytes_per_vector(self) -> float:
        """Index bytes per database vector: the shortlist's plus the float32 rerank stores."""
        shared = isinstance(self.first, FlatFloat) and self.stages[0].dim in self.stores
        first = 0.0 if shared else self.first.bytes_per_vector()  # one array serves both
        return first + sum(4.0 * d for d in self.stores)

    def _query_prefixes(self, queries: np.ndarray) -> Callable[[int], np.ndarray]:
        """``dim -> sliced, normalised queries``, each computed once (inside the timing)."""
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        if queries.ndim != 2 or queries.shape[1] != self.width:
            raise MRLError(
                f"queries have shape {queries.shape}; expected (q, {self.width}) raw embeddings"
            )
        qs: dict[int, np.ndarray] = {}

        def prefix(d: int) -> np.ndarray:
            if d not in qs:
                qs[d] = truncate(queries, d, normalize=True)
            return qs[d]

        return prefix

    def shortlist(self, queries: np.ndarray) -> np.ndarray:
        """Stage 1 alone: ``(q, keep)`` database ids from the index (``-1``: none)."""
        return np.ascontiguousarray(self.first.search(self._query_prefixes(queries)), np.int64)

    def search(self, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(scores, ids)`` of shape ``(q, k)``: the last stage's exact scores (``-inf`` and
        id ``-1`` where the shortlist came back short), best first."""
        from mrl.eval.adaptive import rerank_scores

        prefix = self._query_prefixes(queries)
        ids = np.ascontiguousarray(self.first.search(prefix), dtype=np.int64)
        scores = None
        for s in self.stages[1:]:
            scores = rerank_scores(self.stores[s.dim], prefix(s.dim), ids, check_finite=False)
            order = np.argsort(-scores, axis=1, kind="stable")[:, : s.keep]
            ids = np.take_along_axis(ids, order, axis=1)
            scores = np.take_along_axis(scores, order, axis=1)
        if scores is None:  # a one-stage funnel: score the shortlist itself at its prefix
            x = self.first.x if isinstance(self.first, FlatFloat) else None
            if x is not None:
                scores = rerank_scores(x, prefix(self.stages[0].dim), ids, check_finite=False)
            else:
                scores = np.zeros(ids.shape, np.float32)
        return scores[:, : self.k], ids[:, : self.k]

    def describe(self) -> str:
        return " -> ".join(s.label() for s in self.stages)

    def as_dict(self) -> list[dict[str, Any]]:
        return [asdict(s) | {"precision": s.prec} for s in self.stages]
