"""Adaptive (funnel) retrieval benchmarks: a million synthetic vectors, and real Fashion-MNIST.

Million scale (``adaptive_1m``, run in its own process so its peak RSS is its own)
-----------------------------------------------------------------------------------
* Database: ``N`` x 2048 float32 Matryoshka-like synthetic vectors (:class:`Synthetic`),
  written once to an ``.npy`` file in the bench cache ($MRL_BENCH_CACHE, default
  ``~/.cache/mrl/bench``; about 8 GB for 1M) with plain file writes, and read back in
  chunks with plain reads (a memory map would add the file's pages to this process's RSS).
  ``N`` is scaled down, with a note, when the disk (< 12 GB free) or RAM is too small.
* Built outside the timed region: one preallocated array of the L2-normalised full vectors
  (the exact baseline and the rerank store; FAISS reads it in place), an array of the
  sliced-then-normalised 16-d prefixes (the flat shortlist scans it) and
  ``IndexHNSWFlat(16, M=32)`` built from it.
* Timed, interleaved, median: exact top-10 at 2048 and the flat 16-d shortlist of K=200, both
  with :func:`mrl.eval.search.exact_search` (at 2048: FAISS's flat kernel ``faiss.knn``, the
  faster one there; at 16: blocked BLAS products into a cache-sized buffer + FAISS heaps,
  the faster one there); the HNSW shortlist; each shortlist then reranked at 2048 with FAISS
  by-index inner products (:func:`mrl.eval.adaptive.rerank_scores`, which reads the array
  in place; an ``IndexFlatIP`` filled chunk by chunk would double its storage while growing). Query
  slicing and normalisation are inside the timed region.

Fashion-MNIST (``adaptive_fmnist``)
-----------------------------------
:func:`mrl.eval.adaptive_retrieval` (16-d shortlist, K=200, rerank at the full width, mAP@10)
on real Fashion-MNIST embeddings: database = a seeded subset of the training split, queries
= a seeded subset of the test split. The model (:func:`bench_fmnist_ckpt`) is
``--fmnist-ckpt`` when given; else the newest completed default run under ``logs/train/runs``
(an MRL resnet18 trained on Fashion-MNIST by ``python train.py``); else a small MRL model
trained once by the bench itself (``train.py``, 2 epochs on 10,000 images; about 5 minutes on
2 cores) and cached in ``$MRL_BENCH_CACHE``. The row's note names the model. Only the
``--smoke`` scale (the tests) uses a random-init model: its numbers mean nothing.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from .common import (
    GB,
    Synthetic,
    cache_dir,
    interleaved,
    median,
    mem_available_bytes,
    peak_rss_bytes,
    row,
    set_threads,
    threads,
)

DISK_NEEDED = 12 * GB
CHUNK_ROWS = 25_000
NUM_CLASSES_1M = 1000


# ----------------------------------------------------------------------------- .npy on disk
def _npy_offset(path: Path) -> tuple[int, tuple[int, ...]]:
    with open(path, "rb") as f:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(f)
        else:
            shape, _, dtype = np.lib.format.read_array_header_2_0(f)
        if dtype != np.float32:
            raise ValueError(f"{path}: dtype {dtype}, expected float32")
        return f.tell(), shape


def write_database(path: Path, synth: Synthetic, n: int) -> np.ndarray:
    """Write ``n`` synthetic vectors to ``path`` (.npy, float32) and return their labels.

    Plain ``write`` calls, chunk by chunk, into a temporary file renamed at the end: a
    memory-mapped write would count every dirty page in this process's RSS.
    """
    tmp = path.with_name(path.name + ".tmp")
    labels = np.empty(n, dtype=np.int64)
    with open(tmp, "wb") as f:
        header = {"descr": "<f4", "fortran_order": False, "shape": (n, synth.dim)}
        np.lib.format.write_array_header_1_0(f, header)
        for start, x, y in synth.chunks(n, CHUNK_ROWS):
            x.tofile(f)
            labels[start : start + len(y)] = y
    np.save(path.with_suffix(".labels.npy"), labels)
    tmp.replace(path)
    return labels


def read_chunks(path: Path, chunk: int = CHUNK_ROWS):
    """``(start, rows)`` of a float32 .npy in blocks, with plain reads (no memory map)."""
    offset, (n, d) = _npy_offset(path)
    with open(path, "rb") as f:
        f.seek(offset)
        for start in range(0, n, chunk):
            rows = min(chunk, n - start)
            x = np.fromfile(f, dtype=np.float32, count=rows * d).reshape(rows, d)
            yield start, x


def plan_size(n: int, d: int, path: Path) -> tuple[int, list[str]]:
    """``n`` scaled down to what disk (12 GB free needed) and RAM allow, with notes."""
    notes = []
    cached = path.is_file()
    free = shutil.disk_usage(path.parent).free
    need = n * d * 4
    if not cached and free < max(DISK_NEEDED, need * 1.2):
        n_new = max(10_000, int((free - 4 * GB) / (d * 4)) // 10_000 * 10_000)
        notes.append(
            f"only {free / GB:.1f} GB free on {path.parent} (< {max(DISK_NEEDED, need * 1.2) / GB:.0f} "
            f"GB): database scaled down from {n:,} to {min(n, n_new):,} vectors"
        )
        n = min(n, n_new)
    avail = mem_available_bytes()
    if avail is not None and avail < n * d * 4 * 1.1 + 2 * GB:
        n_new = max(10_000, int((avail - 2 * GB) / (d * 4 * 1.1)) // 10_000 * 10_000)
        if n_new < n:
            notes.append(
                f"only {avail / GB:.1f} GB RAM available: database scaled down from {n:,} to "
                f"{n_new:,} vectors (the exact index holds them all)"
            )
            n = n_new
    return n, notes


def database_path(n: int, d: int, seed: int) -> Path:
    return cache_dir() / f"synthetic_mrl_{n}x{d}_c{NUM_CLASSES_1M}_s{seed}_v1.npy"


# ----------------------------------------------------------------------------- million scale
def adaptive_1m(
    n: int,
    d: int,
    n_queries: int,
    reps: int,
    d_shortlist: int = 16,
    shortlist_k: int = 200,
    k: int = 10,
    hnsw_m: int = 32,
    seed: int = 0,
) -> list[dict[str, Any]]:
    import faiss

    from mrl.core.nesting import truncate
    from mrl.core.validate import as_matrix
    from mrl.eval.adaptive import rerank_scores
    from mrl.eval.retrieval import map_at_k
    from mrl.eval.search import exact_search

    set_threads(2)
    requested = n
    path = database_path(n, d, seed)
    n, notes = plan_size(n, d, path)
    if n != requested:
        path = database_path(n, d, seed)
    synth = Synthetic(d, NUM_CLASSES_1M, seed=seed)
    t0 = time.perf_counter()
    if path.is_file() and path.with_suffix(".labels.npy").is_file():
        db_y = np.load(path.with_suffix(".labels.npy"))
        generated = False
    else:
        db_y = write_database(path, synth, n)
        generated = True
    t_gen = time.perf_counter() - t0

    # One preallocated array of the normalised full vectors: FAISS's knn (exact) and
    # by-index inner products (rerank) read it in place. (An IndexFlatIP filled chunk by
    # chunk would grow its storage by doubling, holding old + new copies: ~1.6x the data.)
    t0 = time.perf_counter()
    xb = np.empty((n, d), dtype=np.float32)
    small = np.empty((n, d_shortlist), dtype=np.float32)
    for start, x in read_chunks(path):
        xb[start : start + len(x)] = truncate(x, d, normalize=True)
        small[start : start + len(x)] = truncate(x, d_shortlist, normalize=True)
        del x
    t_load = time.perf_counter() - t0
    t0 = time.perf_counter()
    hnsw = faiss.IndexHNSWFlat(d_shortlist, hnsw_m, faiss.METRIC_INNER_PRODUCT)
    hnsw.add(small)
    hnsw.hnsw.efSearch = shortlist_k
    t_hnsw_build = time.perf_counter() - t0

    q, q_y = synth.chunk(n_queries, 2)
    # checked for NaN/inf once here; the timed searches (exact and funnels alike) skip that
    # scan, which alone reads the whole database (~1.2 s at 1M x 2048)
    xb, small = as_matrix(xb, "database"), as_matrix(small, "shortlist prefix")

    def rerank(ids: np.ndarray) -> np.ndarray:
        """Top-k of each query's candidates by full-width inner product, gathered by id
        inside FAISS (:func:`mrl.eval.adaptive.rerank_scores`)."""
        scores = rerank_scores(xb, truncate(q, d, normalize=True), ids, check_finite=False)
        order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        return np.take_along_axis(ids, order, axis=1)

    results: dict[str, np.ndarray] = {}

    def exact():
        qd = truncate(q, d, normalize=True)
        results["exact"] = exact_search(xb, qd, k, use_gpu=False, check_finite=False)[1]

    def shortlist():
        qs = truncate(q, d_shortlist, normalize=True)
        return exact_search(small, qs, shortlist_k, use_gpu=False, check_finite=False)[1]

    def flat():
        results["flat"] = rerank(shortlist())

    def hnsw_fn():
        ids = hnsw.search(truncate(q, d_shortlist, normalize=True), shortlist_k)[1]
        results["hnsw"] = rerank(ids)

    # a separate look at the two stages of the flat funnel (profile of the adaptive side)
    def stages():
        t = time.perf_counter()
        ids = shortlist()
        t1 = time.perf_counter()
        rerank(ids)
        return t1 - t, time.perf_counter() - t1

    times = interleaved({"exact": exact, "flat": flat, "hnsw": hnsw_fn}, reps, warmup=0)
    stage_t = [stages() for _ in range(max(1, reps))]
    t_ex, t_flat, t_hnsw = (median(times[key]) for key in ("exact", "flat", "hnsw"))

    def m_ap(ids):
        return 100 * float(map_at_k(db_y[ids] == q_y[:, None], k).mean())

    def overlap(ids):
        return float((ids[:, :, None] == results["exact"][:, None, :]).any(axis=2).mean())

    flops_ratio = n * d / (n * d_shortlist + shortlist_k * d)
    rss = peak_rss_bytes()
    scale = f"{n:,} x {d} float32 database ({n * d * 4 / GB:.1f} GB .npy), {n_queries} queries"
    data = f"{synth.describe()}; file {path} ({'generated' if generated else 'cached'})"
    common = {
        "n": n,
        "dim": d,
        "queries": n_queries,
        "seconds_exact": t_ex,
        "exact_mAP@10": m_ap(results["exact"]),
        "flops_ratio": flops_ratio,
        "generate_seconds": t_gen if generated else 0.0,
        "load_seconds": t_load,
        "notes": notes,
    }
    size = (
        f"{n // 1_000_000}M" if n % 1_000_000 == 0 else f"{n // 1000}k" if n % 1000 == 0 else str(n)
    )
    funnel = f"{d_shortlist}-d shortlist K={shortlist_k} -> rerank at {d} (FAISS by-index IP)"
    rows = [
        row(
            f"adaptive_ret/{size}_flat_speedup",
            t_ex / t_flat,
            ">=",
            14.0,
            interval_of=(times["exact"], times["flat"]),
            seconds=t_flat,
            seconds_shortlist=median([s[0] for s in stage_t]),
            seconds_rerank=median([s[1] for s in stage_t]),
            adaptive_mAP10=m_ap(results["flat"]),
            overlap10=overlap(results["flat"]),
            note=f"exact top-{k} at {d} (faiss.knn) vs flat {funnel} (blocked search), both via "
            f"exact_search; {scale}; {data}; "
            f"{reps} interleaved reps, median, {threads()} threads"
            + "".join(f"; NOTE: {x}" for x in notes),
            **common,
        ),
        row(
            f"adaptive_ret/{size}_hnsw_speedup",
            t_ex / t_hnsw,
            ">=",
            14.0,
            interval_of=(times["exact"], times["hnsw"]),
            seconds=t_hnsw,
            hnsw_build_seconds=t_hnsw_build,
            adaptive_mAP10=m_ap(results["hnsw"]),
            overlap10=overlap(results["hnsw"]),
            note=f"exact at {d} vs HNSW(M={hnsw_m}, efSearch={shortlist_k}) {funnel}; build "
            f"{t_hnsw_build:.0f}s not timed; {scale}",
            **common,
        ),
        row(
            f"adaptive_ret/{size}_flops_ratio",
            flops_ratio,
            ">=",
            14.0,
            note=f"theoretical FLOPs per query, N*{d} / (N*{d_shortlist} + {shortlist_k}*{d}) "
            "(flat shortlist): the ceiling of the wall-clock speed-up",
        ),
        row(
            f"peak_rss/adaptive_{size}_gb",
            rss / GB,
            "<=",
            12.0,
            unit="GB",
            note=f"peak RSS (VmHWM) of the adaptive-retrieval process: {scale}, exact index "
            f"array ({n * d * 4 / GB:.1f} GB) + 16-d flat and HNSW indexes",
        ),
    ]
    return rows


# ----------------------------------------------------------------------------- Fashion-MNIST
BENCH_MODEL = ("trainer.max_epochs=2", "data.subset=10000", "data.val_size=1000")


def newest_default_run(root: Path) -> Path | None:
    """``last.ckpt`` of the newest completed MRL resnet18 Fashion-MNIST run under ``root``."""
    import json

    best: tuple[float, Path] | None = None
    for rec in Path(root).glob("*/run.json"):
        try:
            r = json.loads(rec.read_text())
        except (OSError, ValueError):
            continue
        ckpt = rec.parent / "checkpoints" / "last.ckpt"
        ok = (r.get("task"), r.get("status"), r.get("method"), r.get("model"), r.get("data")) == (
            "train",
            "completed",
            "MRL",
            "resnet18",
            "fashion_mnist",
        )
        if ok and ckpt.is_file() and (best is None or ckpt.stat().st_mtime > best[0]):
            best = (ckpt.stat().st_mtime, ckpt)
    return None if best is None else best[1]


def bench_fmnist_ckpt(given: str | None, scale: str) -> tuple[str | None, str]:
    """``(checkpoint or None, how it was chosen)`` for the Fashion-MNIST rows (module doc)."""
    import subprocess
    import sys

    if given:
        return given, "given with --fmnist-ckpt"
    if scale == "smoke":
        return None, "smoke scale: random-init model"
    root = Path(__file__).resolve().parents[2]
    found = newest_default_run(root / "logs" / "train" / "runs")
    if found is not None:
        return str(found), "the newest completed default run under logs/train/runs"
    run = cache_dir() / "fmnist_mrl_resnet18_e2_10k"
    ckpt = run / "checkpoints" / "last.ckpt"
    if not (run / "metrics.json").is_file():
        cmd = [sys.executable, "train.py", "logger=csv", *BENCH_MODEL, f"hydra.run.dir={run}"]
        proc = subprocess.run(
            [*cmd, "ckpt_path=auto"], cwd=root, capture_output=True, text=True, timeout=3600
        )
        if proc.returncode != 0:
            raise RuntimeError(f"training the bench model failed: {proc.stderr[-500:]}")
        how = f"trained now by the bench ({' '.join(BENCH_MODEL)}), cached in {run}"
    else:
        how = f"trained by the bench earlier ({' '.join(BENCH_MODEL)}), cached in {run}"
    return str(ckpt), how


def fmnist_module(ckpt: str | None) -> tuple[Any, str, str]:
    """``(module, description, cache key)``: the checkpoint's model, or a seeded random one."""
    import torch

    from mrl.eval.cache import file_fingerprint
    from mrl.objectives.classification import MRLLitModule
    from mrl.tasks.evaluate import load_module

    if ckpt:
        module = load_module(ckpt)
        src = f"trained checkpoint {ckpt} ({module.method}, {module.hparams.model.get('name')})"
        return module, src, f"ckpt-{file_fingerprint(ckpt)}"
    torch.manual_seed(0)
    module = MRLLitModule(model={"name": "resnet18"}, num_classes=10, in_chans=1, img_size=28)
    src = "a RANDOM-INIT MRL resnet18 (seed 0, small-input stem, eval mode; not trained)"
    return module, src, "resnet18-randinit-s0"


def _fmnist_embeddings(ckpt: str | None, n_db: int, n_q: int) -> tuple[dict, str]:
    """Embeddings of a seeded train subset (database) and test subset (queries), cached."""
    import torch

    from mrl.data import FashionMNISTDataModule
    from mrl.eval.cache import embed_loader

    module, src, key = fmnist_module(ckpt)
    cache = cache_dir() / f"fmnist_{key}_{n_db}_{n_q}_v1.npz"
    if cache.is_file():
        with np.load(cache) as f:
            return {k: f[k] for k in f.files}, src + f"; embeddings cached in {cache}"
    dm = FashionMNISTDataModule(
        subset=n_db, test_subset=n_q, eval_batch_size=512, download=False, seed=0
    )
    dm.setup()
    dev = torch.device("cpu")
    arrays = {}
    arrays["train_x"], arrays["train_y"] = embed_loader(module, dm.train_eval_dataloader(), dev)
    arrays["test_x"], arrays["test_y"] = embed_loader(module, dm.test_dataloader(), dev)
    tmp = cache.with_name(f".{cache.stem}.{os.getpid()}.tmp.npz")
    np.savez(tmp, **arrays)
    tmp.replace(cache)
    return arrays, src + f"; embeddings computed now and cached in {cache}"


def adaptive_fmnist(
    n_db: int, n_q: int, ckpt: str | None = None, scale: str = "full"
) -> list[dict[str, Any]]:
    from mrl.eval import adaptive_retrieval

    set_threads(2)
    ckpt, how = bench_fmnist_ckpt(ckpt, scale)
    t0 = time.perf_counter()
    arrays, src = _fmnist_embeddings(ckpt, n_db, n_q)
    src = f"{src} ({how})"
    t_embed = time.perf_counter() - t0
    tx, ty, qx, qy = (arrays[k] for k in ("train_x", "train_y", "test_x", "test_y"))
    width = tx.shape[1]
    out = adaptive_retrieval(tx, ty, qx, qy, 16, width, 200, 10, repeats=1)
    gap = 100 * (out["adaptive_ret/exact_mAP@10"] - out["adaptive_ret/mAP@10"])
    return [
        row(
            "adaptive_ret/fmnist_map10_gap_points",
            gap,
            "|x| <=",
            0.5,
            unit="points",
            exact_mAP10=100 * out["adaptive_ret/exact_mAP@10"],
            adaptive_mAP10=100 * out["adaptive_ret/mAP@10"],
            overlap10=out["adaptive_ret/overlap@10"],
            embed_seconds=t_embed,
            digest=hashlib.sha256(tx[:64].tobytes()).hexdigest()[:12],
            note=(
                f"exact mAP@10 at {width} minus adaptive (16-d shortlist K=200, rerank at "
                f"{width}), percentage points; real Fashion-MNIST, database {len(tx)} train "
                f"images, {len(qx)} test queries (seeded subsets); embeddings from {src}"
            ),
        )
    ]
