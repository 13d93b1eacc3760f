"""Adaptive classification (a confidence cascade) and adaptive (funnel) retrieval.

Adaptive classification
-----------------------
* Inputs are per-prefix logits ``{m: (n, C)}`` from the MRL heads (raw slices), on a held-out
  *calibration* split and on the test split.
* Cascade: visit prefixes from the smallest upward; at prefix ``m`` answer with its argmax
  when its max softmax probability is ``>= t_m``; the largest prefix always answers.
* Threshold rule (:func:`learn_thresholds`), for a target precision ``p``: at each prefix
  ``t_m`` is the *smallest* threshold for which the calibration samples it accepts
  (all calibration samples with confidence ``>= t_m`` at that prefix, independently of the
  other prefixes) are correct at a rate ``>= p``; ``inf`` (never stop there) if none does.
  The headline operating point uses ``p`` = calibration accuracy of the largest prefix.
* ``expected_dim`` is the mean size of the answering prefix over test items, in raw dims
  (a larger prefix contains the smaller ones, so this is the embedding size read; the
  small heads' extra cost is ignored, as in the paper).
* The curve sweeps ``p`` and adds the "always the largest prefix" point; ``dim_to_match`` is
  the smallest expected dim on the curve whose *test* top-1 is within ``target_tolerance``
  of the largest prefix's test top-1 (a reporting statistic, as the paper's, chosen on test).

Adaptive retrieval
------------------
* Every stage ``(dim, keep)`` of a funnel scores candidates by cosine on the sliced then
  L2-normalised prefix. The first stage is an exact search over the whole database; each
  later stage re-scores only the survivors of the previous one and keeps the best ``keep``.
  The default funnel is ``[(d_shortlist, shortlist_k), (d_rerank, k)]`` (paper: 16-d
  shortlist of 200, reranked at 2048-d).
* Reranking gathers candidates by id inside FAISS (``fvec_inner_products_by_idx``),
  not with numpy fancy indexing plus einsum (which copies ``K x D`` floats per query).
* Compared with exact top-k search at the last stage's dim: mAP@k (the paper's /k
  convention, :func:`mrl.eval.retrieval.map_at_k`), top-1 (1-NN label accuracy),
  theoretical FLOPs per query (``N * D_r`` against ``N * D_1 + sum_i keep_{i-1} * D_i``) and
  wall-clock (median over ``repeats``, same process, CPU; index building excluded, query
  slicing and normalisation included). The exact baseline and the first stage both call
  :func:`mrl.eval.search.exact_search`.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mrl.core.errors import MRLError
from mrl.core.nesting import truncate
from mrl.core.validate import as_labels, as_matrix, positive_int
from mrl.eval.funnel import Funnel, Stage, check_funnel
from mrl.eval.registry import EvalData, Evaluator
from mrl.eval.retrieval import map_at_k
from mrl.eval.search import exact_search, faiss, search_backend

# ----------------------------------------------------------------------------- classification


def softmax_confidence(logits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(max softmax probability, argmax)`` per row, computed stably in float64."""
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=1, keepdims=True)
    return 1.0 / np.exp(z).sum(axis=1), z.argmax(axis=1)


def _check_logits(logits: dict[int, np.ndarray], y: np.ndarray, name: str) -> np.ndarray:
    if not logits:
        raise MRLError(f"{name} is empty; pass {{m: (n, C) logits}} for every prefix")
    n = len(next(iter(logits.values())))
    for m, lg in logits.items():
        if np.ndim(lg) != 2 or len(lg) != n:
            raise MRLError(f"{name}[{m}] has shape {np.shape(lg)}; expected ({n}, num_classes)")
    return as_labels(y, n, f"{name} labels")


ConfPred = dict[int, tuple[np.ndarray, np.ndarray]]


def _conf_pred(logits: dict[int, np.ndarray]) -> ConfPred:
    return {m: softmax_confidence(logits[m]) for m in sorted(logits)}


def _precision_curves(calib: ConfPred, y: np.ndarray) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Per prefix: candidate thresholds (distinct confidences, decreasing) and the precision
    of the calibration samples each one accepts."""
    curves = {}
    for m, (conf, pred) in calib.items():
        order = np.argsort(-conf, kind="stable")
        conf, correct = conf[order], pred[order] == y[order]
        precision = np.cumsum(correct) / np.arange(1, len(conf) + 1)
        # a threshold accepts whole groups of tied confidences: only ends of groups count
        group_end = np.append(conf[1:] < conf[:-1], True)
        curves[m] = conf[group_end], precision[group_end]
    return curves


def _thresholds(
    curves: dict[int, tuple[np.ndarray, np.ndarray]], target: float
) -> dict[int, float]:
    dims = sorted(curves)
    out = {}
    for m in dims[:-1]:
        conf, precision = curves[m]
        ok = np.flatnonzero(precision >= target)
        out[m] = float(conf[ok[-1]]) if len(ok) else float("inf")
    out[dims[-1]] = 0.0
    return out


def _cascade(test: ConfPred, thresholds: dict[int, float]) -> tuple[np.ndarray, np.ndarray]:
    dims = sorted(test)
    n = len(test[dims[0]][0])
    pred, used = np.full(n, -1, dtype=np.int64), np.zeros(n, dtype=np.int64)
    done = np.zeros(n, dtype=bool)
    for m in dims:
        conf, p = test[m]
        take = ~done & ((conf >= thresholds[m]) | (m == dims[-1]))
        pred[take], used[take] = p[take], m
        done |= take
    return pred, used


def learn_thresholds(
    calib_logits: dict[int, np.ndarray], calib_y: np.ndarray, target_precision: float
) -> dict[int, float]:
    """Per-prefix thresholds ``t_m`` reaching ``target_precision`` on the calibration split.

    ``t_m`` is the smallest max-softmax value such that the calibration samples with
    confidence ``>= t_m`` at prefix ``m`` are correct at a rate ``>= target_precision``
    (``inf`` when no threshold does). The largest prefix gets ``0.0`` (it always answers).
    """
    y = _check_logits(calib_logits, calib_y, "calib_logits")
    return _thresholds(_precision_curves(_conf_pred(calib_logits), y), target_precision)


def cascade(
    logits: dict[int, np.ndarray], thresholds: dict[int, float]
) -> tuple[np.ndarray, np.ndarray]:
    """Run the cascade: ``(predictions, size of the answering prefix)`` per row."""
    return _cascade(_conf_pred(logits), thresholds)


def adaptive_classification_curve(
    calib_logits: dict[int, np.ndarray],
    calib_y: np.ndarray,
    test_logits: dict[int, np.ndarray],
    test_y: np.ndarray,
    targets: Sequence[float] | None = None,
) -> list[dict]:
    """Accuracy vs expected dims over a sweep of target precisions.

    Args:
        calib_logits, calib_y: calibration split, ``{m: (n_calib, C)}`` and labels.
        test_logits, test_y: test split, same prefixes.
        targets: target precisions for :func:`learn_thresholds`; default 41 values evenly
            from the smallest prefix's calibration accuracy to 1, plus the largest prefix's.

    Returns:
        One dict per operating point, sorted by ``expected_dim``: ``target_precision``,
        ``top1`` (test, fraction), ``expected_dim`` (test, raw dims) and ``thresholds``.
        The last point (``target_precision=inf``) always uses the largest prefix.
    """
    cy = _check_logits(calib_logits, calib_y, "calib_logits")
    ty = _check_logits(test_logits, test_y, "test_logits")
    if sorted(calib_logits) != sorted(test_logits):
        raise MRLError(
            f"calib prefixes {sorted(calib_logits)} differ from test prefixes {sorted(test_logits)}"
        )
    calib, test = _conf_pred(calib_logits), _conf_pred(test_logits)
    curves = _precision_curves(calib, cy)
    if targets is None:
        acc = [float(np.mean(pred == cy)) for _, pred in calib.values()]
        targets = [*np.linspace(acc[0], 1.0, 41), acc[-1]]
    points = []
    for p in [*sorted({float(t) for t in targets}), float("inf")]:
        th = _thresholds(curves, p)
        pred, used = _cascade(test, th)
        points.append(
            {
                "target_precision": p,
                "top1": float(np.mean(pred == ty)),
                "expected_dim": float(used.mean()),
                "thresholds": th,
            }
        )
    return sorted(points, key=lambda pt: (pt["expected_dim"], -pt["top1"]))


def adaptive_classification(
    calib_logits: dict[int, np.ndarray],
    calib_y: np.ndarray,
    test_logits: dict[int, np.ndarray],
    test_y: np.ndarray,
    target_tolerance: float = 0.005,
) -> dict[str, float]:
    """Confidence cascade over prefixes with thresholds learnt on a calibration split.

    Headline operating point: target precision = the largest prefix's calibration top-1
    (see the module docstring for the rule).

    Returns:
        ``adaptive_cls/top1`` (test accuracy, fraction), ``adaptive_cls/expected_dim`` (mean
        answering prefix size, raw dims), ``adaptive_cls/max_prefix_top1`` (largest prefix
        alone), ``adaptive_cls/dim_to_match`` (smallest expected dim on
        :func:`adaptive_classification_curve` within ``target_tolerance`` of the largest
        prefix's top-1) and ``adaptive_cls/dim_to_match_top1`` (its top-1).
    """
    if not 0 <= float(target_tolerance) < 1:
        raise MRLError(f"target_tolerance={target_tolerance!r} must be a fraction in [0, 1)")
    curve = adaptive_classification_curve(calib_logits, calib_y, test_logits, test_y)
    largest = max(calib_logits)
    target = float(np.mean(softmax_confidence(calib_logits[largest])[1] == np.asarray(calib_y)))
    headline = next(pt for pt in curve if pt["target_precision"] == target)
    # the target=inf point: the largest prefix answers everything
    max_top1 = next(pt["top1"] for pt in curve if pt["target_precision"] == float("inf"))
    match = next(pt for pt in curve if pt["top1"] >= max_top1 - target_tolerance)
    return {
        "adaptive_cls/top1": headline["top1"],
        "adaptive_cls/expected_dim": headline["expected_dim"],
        "adaptive_cls/max_prefix_top1": max_top1,
        "adaptive_cls/dim_to_match": match["expected_dim"],
        "adaptive_cls/dim_to_match_top1": match["top1"],
    }


# ----------------------------------------------------------------------------- retrieval


def rerank_scores(
    database: np.ndarray, queries: np.ndarray, candidates: np.ndarray, check_finite: bool = True
) -> np.ndarray:
    """Inner products of each query with its own candidate rows of ``database``.

    ``database``: ``(N, d)`` float32, C-contiguous (read in place); ``queries``: ``(q, d)``;
    ``candidates``: ``(q, K)`` row ids, ``-1`` for none (scores ``-inf``, as FAISS pads
    short result lists). Returns ``(q, K)`` float32, computed inside FAISS
    (``fvec_inner_products_by_idx``) without gathering the ``q x K x d`` candidate vectors.
    The shapes and ids are checked first: FAISS reads the rows unchecked.
    ``check_finite=False`` skips the NaN/inf scan of ``database`` (a read of all of it, which
    costs more than the rerank itself at 1M rows): for a store validated once, as
    :class:`mrl.eval.funnel.Funnel` does at build.
    """
    database = as_matrix(database, "database", check_finite=check_finite)
    queries = as_matrix(queries, "queries")
    candidates = np.ascontiguousarray(candidates, dtype=np.int64)
    if queries.shape[1] != database.shape[1]:
        raise MRLError(
            f"queries have width {queries.shape[1]} but the database has width "
            f"{database.shape[1]}; both must be the same prefix"
        )
    if candidates.ndim != 2 or len(candidates) != len(queries):
        raise MRLError(
            f"candidates have shape {candidates.shape}; expected ({len(queries)}, K): "
            "one row of database ids per query"
        )
    if candidates.size and (candidates.min() < -1 or candidates.max() >= len(database)):
        bad = candidates[(candidates < -1) | (candidates >= len(database))].flat[0]
        raise MRLError(
            f"candidate id {bad} is outside the database (0..{len(database) - 1}, or -1 for none)"
        )
    out = np.empty(candidates.shape, dtype=np.float32)
    faiss.fvec_inner_products_by_idx(
        faiss.swig_ptr(out),
        faiss.swig_ptr(queries),
        faiss.swig_ptr(database),
        faiss.swig_ptr(candidates),
        database.shape[1],
        len(queries),
        candidates.shape[1],
    )
    return out


def _funnel(
    funnel: Sequence[Any] | None,
    d_shortlist: int,
    d_rerank: int,
    shortlist_k: int,
    k: int,
    width: int,
    n: int,
) -> list[Stage]:
    """The checked stages (:func:`mrl.eval.funnel.check_funnel`); the default is
    ``[(d_shortlist, shortlist_k), (min(d_rerank, width), k)]``."""
    stages = [(d_shortlist, shortlist_k), (min(d_rerank, width), k)] if funnel is None else funnel
    if funnel is not None and not isinstance(funnel, (list, tuple)) and hasattr(funnel, "__iter__"):
        stages = list(funnel)
    for i, s in enumerate(stages):
        if isinstance(s, (list, tuple)) and len(s) == 2:
            positive_int(s[0], "funnel dim"), positive_int(s[1], "funnel keep")
        elif not isinstance(s, (Stage, Mapping, list, tuple)):
            raise MRLError(
                f"funnel stage {i + 1}={s!r}: give (dim, keep) or {{dim: .., keep: .., "
                "precision: .., index: ..}"
            )
    return check_funnel(stages, width, n, k)


def adaptive_retrieval(
    database: np.ndarray,
    db_y: np.ndarray,
    queries: np.ndarray,
    q_y: np.ndarray,
    d_shortlist: int = 16,
    d_rerank: int = 2048,
    shortlist_k: int = 200,
    k: int = 10,
    funnel: Sequence[Any] | None = None,
    repeats: int = 3,
    device: str | None = None,
    index_cache: str | Path | None = None,
) -> dict[str, float]:
    """Shortlist at a small prefix, rerank at a large one; compare with exact search.

    Args:
        database, db_y: raw (unnormalised) full embeddings ``(N, d)`` and labels.
        queries, q_y: raw query embeddings ``(q, d)`` and labels.
        d_shortlist: prefix of the exact shortlist search (paper: 16).
        d_rerank: rerank prefix (paper: 2048), clipped to the width ``d``.
        shortlist_k: shortlist length ``K`` (paper: 200).
        k: results returned and scored (mAP@k, top-1).
        funnel: optional stages replacing the two defaults: ``(dim, keep)`` pairs, e.g.
            ``[(16, 200), (64, 100), (256, 50), (2048, 10)]``, or :class:`mrl.eval.funnel.Stage`
            fields, e.g. ``[{dim: 64, keep: 1000, precision: binary}, {dim: 2048, keep: 10}]``
            (a shortlist index: flat / hnsw / ivf / ivfpq / opq at float32 / float16 / int8 /
            binary / pq, see :mod:`mrl.eval.funnel`); its last dim is the exact baseline's.
        repeats: timed runs of each method; the median is reported.
        device: ``auto|cpu|cuda`` (default: ``eval.py search.device``, else auto; see
            :mod:`mrl.eval.search`). On CUDA both methods run on the GPU: with flat/float32
            stages the exact search and the shortlist with FAISS GPU or torch, the rerank
            with torch (a gather and a batched product per query block); index stages need
            FAISS GPU (their rerank stays on the CPU).
        index_cache: folder where the shortlist index is cached, keyed by the database's
            content (None: built every time).

    Returns:
        ``adaptive_ret/mAP@{k}``, ``adaptive_ret/exact_mAP@{k}``, ``adaptive_ret/top1``,
        ``adaptive_ret/exact_top1``, ``adaptive_ret/overlap@{k}`` and
        ``adaptive_ret/recall@{k}`` (share of the exact top-k ids found: the same number),
        ``adaptive_ret/flops_ratio`` (exact / adaptive, theoretical; flat/float32 shortlists
        only), ``adaptive_ret/speedup`` (exact / adaptive seconds), ``adaptive_ret/seconds``
        and ``adaptive_ret/exact_seconds`` (medians, all queries),
        ``adaptive_ret/bytes_per_vector`` (index storage, :meth:`Funnel.bytes_per_vector`)
        and ``adaptive_ret/build_seconds`` (index build or cache load).
    """
    database, queries = as_matrix(database, "database"), as_matrix(queries, "queries")
    if database.shape[1] != queries.shape[1]:
        raise MRLError(
            f"queries have width {queries.shape[1]} but the database has {database.shape[1]}"
        )
    db_y = as_labels(db_y, len(database), "db_y")
    q_y = as_labels(q_y, len(queries), "q_y")
    k, repeats = positive_int(k, "k"), positive_int(repeats, "repeats")
    n, width = database.shape
    stages = _funnel(funnel, d_shortlist, d_rerank, shortlist_k, k, width, n)
    d_final = stages[-1].dim
    all_flat = all(s.index == "flat" and s.prec == "float32" for s in stages)

    # built once, outside the timed region: the normalised prefixes (and the shortlist index)
    backend = search_backend(device)
    t_build = time.perf_counter()
    if backend == "cpu" or not all_flat:
        engine = Funnel(stages, k, device=device).build(database, cache_dir=index_cache)
        stored_final = engine.stores.get(d_final)
        if stored_final is None:  # a one-stage funnel
            stored_final = truncate(database, d_final, normalize=True)
        t_build = engine.build_seconds

        def search(d: int, keep: int) -> np.ndarray:
            q = truncate(queries, d, normalize=True)
            return exact_search(stored_final, q, keep, device=engine.first.device)[1]

        def adaptive() -> np.ndarray:
            return engine.search(queries)[1]

        bytes_per_vector = engine.bytes_per_vector()
    else:
        stored = {d: truncate(database, d, normalize=True) for d in {s.dim for s in stages}}
        search, adaptive = _gpu_funnel(
            stored, queries, [(s.dim, s.keep) for s in stages], k, backend
        )
        t_build = time.perf_counter() - t_build
        bytes_per_vector = sum(4.0 * d for d in stored)

    def exact() -> np.ndarray:
        return search(d_final, k)

    ids: dict[str, np.ndarray] = {}
    times: dict[str, list[float]] = {"exact": [], "adaptive": []}
    for _ in range(repeats):  # interleaved, so load drift hits both alike
        for name, fn in (("exact", exact), ("adaptive", adaptive)):
            start = time.perf_counter()
            ids[name] = fn()
            times[name].append(time.perf_counter() - start)
    t_exact, t_adaptive = float(np.median(times["exact"])), float(np.median(times["adaptive"]))
    found = ids["adaptive"] >= 0
    hits = (db_y[ids["adaptive"].clip(0)] == q_y[:, None]) & found
    exact_hits = db_y[ids["exact"]] == q_y[:, None]
    shared = (ids["adaptive"][:, :, None] == ids["exact"][:, None, :]).any(axis=2) & found
    out = {
        f"adaptive_ret/mAP@{k}": float(map_at_k(hits, k).mean()),
        f"adaptive_ret/exact_mAP@{k}": float(map_at_k(exact_hits, k).mean()),
        "adaptive_ret/top1": float(hits[:, 0].mean()),
        "adaptive_ret/exact_top1": float(exact_hits[:, 0].mean()),
        f"adaptive_ret/overlap@{k}": float(shared.mean()),
        f"adaptive_ret/recall@{k}": float(shared.mean()),
    }
    if stages[0].index == "flat" and stages[0].prec == "float32":
        adaptive_flops = n * stages[0].dim + sum(
            a.keep * b.dim for a, b in zip(stages[:-1], stages[1:], strict=True)
        )
        out["adaptive_ret/flops_ratio"] = n * d_final / adaptive_flops
    return out | {
        "adaptive_ret/speedup": t_exact / t_adaptive,
        "adaptive_ret/seconds": t_adaptive,
        "adaptive_ret/exact_seconds": t_exact,
        "adaptive_ret/bytes_per_vector": float(bytes_per_vector),
        "adaptive_ret/build_seconds": float(t_build),
    }


def _gpu_funnel(stored: dict[int, np.ndarray], queries: np.ndarray, stages, k: int, backend: str):
    """``(search, adaptive)`` of :func:`adaptive_retrieval` on the GPU: the normalised
    prefixes are moved there (or into FAISS GPU indexes) once, outside the timed region."""
    import torch

    from mrl.eval.search import _cuda_device, _full_fp32, flat_ip_index, torch_search

    on_gpu = torch.cuda.is_available()
    dev = _cuda_device() if on_gpu else torch.device("cpu")
    tensors = {d: torch.from_numpy(x).to(dev) for d, x in stored.items()}
    indexes = (
        {d: flat_ip_index(x, True) for d, x in stored.items()} if backend == "faiss-gpu" else {}
    )

    def search_t(d: int, keep: int) -> torch.Tensor:
        q = truncate(queries, d, normalize=True)
        if indexes:
            return torch.from_numpy(indexes[d].search(q, keep)[1]).to(dev)
        return torch_search(tensors[d], torch.from_numpy(q).to(dev), [d], keep, False)[d][1]

    def search(d: int, keep: int) -> np.ndarray:
        return search_t(d, keep).cpu().numpy()

    @torch.no_grad()
    def adaptive() -> np.ndarray:
        d0, keep0 = stages[0]
        ids = search_t(d0, keep0)
        with _full_fp32():
            return _rerank(ids)

    def _rerank(ids: torch.Tensor) -> np.ndarray:
        for d, keep in stages[1:]:
            q = torch.from_numpy(truncate(queries, d, normalize=True)).to(dev)
            chunk = max(1, (1 << 30) // (4 * ids.shape[1] * d))  # q x K x d floats per block
            parts = []
            for s0 in range(0, len(q), chunk):
                cand = ids[s0 : s0 + chunk]
                vecs = tensors[d][cand.clamp_min(0)]  # (b, K, d)
                sc = torch.einsum("bd,bkd->bk", q[s0 : s0 + chunk], vecs)
                parts.append(sc.masked_fill(cand < 0, float("-inf")))
            order = torch.cat(parts).argsort(dim=1, descending=True, stable=True)[:, :keep]
            ids = ids.gather(1, order)
        return ids[:, :k].cpu().numpy()

    return search, adaptive


class AdaptiveClassification(Evaluator):
    """``adaptive_cls/*``: the confidence cascade over the trained heads' prefixes,
    thresholds learnt on the validation split (the heads' own dims, not ``dims``)."""

    needs_heads = True
    needs_val = True

    def __init__(self, **settings: Any) -> None:
        self.settings = settings

    def __call__(self, data: EvalData, dims: Sequence[int]) -> dict[str, float]:
        return adaptive_classification(
            data.logits("val"), data.val_y, data.logits("test"), data.test_y, **self.settings
        )


class AdaptiveRetrieval(Evaluator):
    """``adaptive_ret/*``: funnel retrieval (shortlist, rerank) against exact search at the
    rerank dim (``d_rerank: max`` = the full width), with its own prefixes.

    ``funnel``: ``(dim, keep)`` pairs or stage mappings (:mod:`mrl.eval.funnel`).
    ``index_cache``: ``auto`` = an ``indexes/`` folder beside memory-mapped embeddings (the
    run dir's cache), nothing for in-memory ones; ``null`` = never cache; else a folder.
    """

    def __init__(
        self,
        d_rerank: int | str | None = "max",
        funnel=None,
        index_cache: str | None = "auto",
        **settings: Any,
    ) -> None:
        self.d_rerank = d_rerank
        self.funnel = (
            [dict(s) if isinstance(s, Mapping) else tuple(s) for s in funnel] if funnel else None
        )
        self.index_cache = index_cache
        self.settings = settings

    def size_problem(self, sizes: Mapping[str, int], num_classes: int, width: int) -> str | None:
        """The funnel checked against the database size and width before any embedding."""
        d_rerank = width if self.d_rerank in (None, "max") else int(self.d_rerank)
        opts = {
            k: self.settings[k] for k in ("d_shortlist", "shortlist_k", "k") if k in self.settings
        }
        try:
            _funnel(
                self.funnel,
                int(opts.get("d_shortlist", 16)),
                d_rerank,
                int(opts.get("shortlist_k", 200)),
                int(opts.get("k", 10)),
                width,
                int(sizes.get("train", 0)),
            )
        except MRLError as e:
            return str(e)
        return None

    def cache_folder(self, data: EvalData) -> Path | None:
        if self.index_cache in (None, "", "none", "null"):
            return None
        if self.index_cache != "auto":
            return Path(str(self.index_cache)).expanduser()
        source = getattr(data.train_x, "filename", None)
        return Path(source).parent / "indexes" if source else None

    def __call__(self, data: EvalData, dims: Sequence[int]) -> dict[str, float]:
        d_rerank = data.width if self.d_rerank in (None, "max") else int(self.d_rerank)
        return adaptive_retrieval(
            data.train_x,
            data.train_y,
            data.test_x,
            data.test_y,
            d_rerank=d_rerank,
            funnel=self.funnel,
            index_cache=self.cache_folder(data),
            **self.settings,
        )
