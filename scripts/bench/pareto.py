"""Pareto benchmark of funnel retrieval (:mod:`mrl.eval.funnel`): speed, accuracy and memory.

Usage (from the repository root)::

    python -m scripts.bench.pareto --n 1000000            # 1M x 2048 synthetic + Fashion-MNIST
    python -m scripts.bench.pareto --n 200000 --skip-fmnist --reps 3

Per configuration (a shortlist stage, then an exact rerank at the full width, k=10) and per
dataset: mAP@10 (class labels, the paper's /k convention) next to exact full-width search,
recall@10 of the exact top-10 ids, wall-clock per 1,000 queries, speed-up against exact
(the ratio of medians over interleaved rounds, with a 95% paired-bootstrap interval), index
bytes per vector (:meth:`mrl.eval.funnel.Funnel.bytes_per_vector`: shortlist codes + links
or ids + the float32 full-width rerank store) and build time (or cache load time).

Datasets: (a) ``--n`` x 2048 synthetic Matryoshka-like vectors
(:class:`scripts.bench.common.Synthetic`, 1000 classes, the ``.npy`` file of the
``adaptive_1m`` bench, generated once into $MRL_BENCH_CACHE); (b) Fashion-MNIST embeddings of
a model trained here (:func:`scripts.bench.retrieval.bench_fmnist_ckpt`): the training split
is the database, test images the queries. Indexes are cached under
``$MRL_BENCH_CACHE/indexes/<dataset>`` keyed by the database content (a rerun loads them:
its build time is the load time, and ``loaded`` says so).

Timing: one process, ``--threads`` (default 2) for FAISS and torch; every round runs exact
search and every configuration back to back (A B C ... A B C), ``--reps`` rounds after one
warm-up round, median. Query slicing and normalisation are timed; index building is not.
The database is checked for NaN/inf once, before timing: neither exact search nor a funnel
rescans it per call (``check_finite=False``), since that scan alone reads all N x 2048 floats.

Rows go into ``--out`` (default results/bench.json; rows of an earlier run with the same
names are replaced, others kept), the table into results/bench_retrieval.md and the plot
(speed-up vs mAP@10, one panel per dataset) into results/bench_retrieval.png. Targets: the
best flat funnel (no graph, no clustering) >= 14x and the best funnel >= 100x, both within
0.5 mAP@10 points of exact; the largest index <= float32 full width + 10%.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from .common import (
    GB,
    THREADS_ENV,
    Synthetic,
    cache_dir,
    interleaved,
    median,
    peak_rss_bytes,
    row,
    set_threads,
    threads,
)

K = 10
GAP_POINTS = 0.5
FLAT_TARGET, BEST_TARGET, BYTES_SLACK = 14.0, 100.0, 1.10


def configs(n: int, width: int) -> dict[str, list[dict[str, Any]]]:
    """Named funnels: a shortlist stage, optional float32 reranks at a small prefix, then the
    exact rerank at ``width`` (k=10). A small-prefix rerank is kept only where its store costs
    at most 1/16 of the float32 full-width store (128 dims at 2048), so every funnel stays
    within the +10% memory budget; at a smaller width it is dropped (and from the name)."""
    nlist = max(16, min(int(4 * np.sqrt(n)) // 16 * 16, n // 64))
    ivf = {"index": "ivf", "nlist": nlist, "nprobe": 16}
    shortlists: dict[str, tuple[dict[str, Any], tuple[int, int] | None]] = {
        # name: (shortlist stage, (dim, keep) of the small-prefix rerank or None)
        "flat_f32_d16_K200": ({"dim": 16, "keep": 200}, None),
        "flat_f32_d32_K1000": ({"dim": 32, "keep": 1000}, (128, 100)),
        "flat_int8_d64_K200": ({"dim": 64, "keep": 200, "precision": "int8"}, None),
        "flat_bin_d64_K1000": ({"dim": 64, "keep": 1000, "precision": "binary"}, (128, 50)),
        "flat_bin_d64_K400": ({"dim": 64, "keep": 400, "precision": "binary"}, (128, 30)),
        "flat_bin_d128_K1000": ({"dim": 128, "keep": 1000, "precision": "binary"}, (128, 100)),
        "flat_bin_d256_K2000": ({"dim": 256, "keep": 2000, "precision": "binary"}, (128, 100)),
        "hnsw_f32_d32_K200": ({"dim": 32, "keep": 200, "index": "hnsw", "hnsw_m": 32}, (64, 30)),
        "hnsw_int8_d64_M16_K100": (
            {"dim": 64, "keep": 100, "index": "hnsw", "precision": "int8", "hnsw_m": 16,
             "ef_search": 100},
            (128, 30),
        ),
        "hnsw_bin_d128_K400": (
            {"dim": 128, "keep": 400, "index": "hnsw", "precision": "binary", "hnsw_m": 32},
            (128, 30),
        ),
        "ivf_f32_ds64_dc32_K200": ({"dim": 64, "keep": 200, "d_c": 32, **ivf}, (128, 30)),
        "ivf_int8_ds128_dc64_K200": (
            {"dim": 128, "keep": 200, "d_c": 64, "precision": "int8", **ivf}, (128, 30),
        ),
        "ivf_int8_ds64_dc32_np8_K100": (
            {"dim": 64, "keep": 100, "d_c": 32, "precision": "int8", **ivf, "nprobe": 8},
            (128, 20),
        ),
        "ivfpq_ds128_dc32_pq32_K400": (
            {**ivf, "dim": 128, "keep": 400, "index": "ivfpq", "d_c": 32, "pq_m": 32}, (128, 30),
        ),
        "opq_d64_pq32_K400": (
            {"dim": 64, "keep": 400, "index": "opq", "pq_m": 32, "nlist": nlist, "nprobe": 16},
            (128, 30),
        ),
        "opq_d64_pq16_np8_K200": (
            {"dim": 64, "keep": 200, "index": "opq", "pq_m": 16, "nlist": nlist, "nprobe": 8},
            (128, 20),
        ),
    }  # fmt: skip
    out = {}
    for name, (first, mid) in shortlists.items():
        stages = [first]
        if mid is not None and 16 * mid[0] <= width:
            stages.append({"dim": mid[0], "keep": mid[1]})
            name += f"_r{mid[0]}_K{mid[1]}"
        out[name] = [*stages, {"dim": width, "keep": K}]
    return out


def is_flat(stages: list[dict[str, Any]]) -> bool:
    return all(s.get("index", "flat") == "flat" for s in stages)


# ----------------------------------------------------------------------------- data
def synthetic_database(n: int, d: int, n_queries: int, seed: int = 0) -> dict[str, Any]:
    """The normalised full-width database (read in chunks from the cached .npy), its labels,
    queries, and the sha256 of the file's rows (the index cache key)."""
    from mrl.core.nesting import truncate

    from .retrieval import NUM_CLASSES_1M, database_path, plan_size, read_chunks, write_database

    path = database_path(n, d, seed)
    requested = n
    n, notes = plan_size(n, d, path)
    if n != requested:
        path = database_path(n, d, seed)
    synth = Synthetic(d, NUM_CLASSES_1M, seed=seed)
    if path.is_file() and path.with_suffix(".labels.npy").is_file():
        db_y = np.load(path.with_suffix(".labels.npy"))
    else:
        db_y = write_database(path, synth, n)
    xb = np.empty((n, d), dtype=np.float32)
    h = hashlib.sha256(f"{n}x{d}".encode())
    for start, x in read_chunks(path):
        h.update(x.data)
        xb[start : start + len(x)] = truncate(x, d, normalize=True)
    q, q_y = synth.chunk(n_queries, 2)
    desc = f"{n:,} x {d} {synth.describe()} ({path.name})"
    return dict(xb=xb, db_y=db_y, q=q, q_y=q_y, key=h.hexdigest()[:16], desc=desc, notes=notes)


def fmnist_database(ckpt: str | None, n_db: int, n_q: int) -> dict[str, Any]:
    """Fashion-MNIST embeddings of a trained model (train subset = database)."""
    from mrl.core.nesting import truncate
    from mrl.eval.funnel import content_key

    from .retrieval import _fmnist_embeddings, bench_fmnist_ckpt

    ckpt, how = bench_fmnist_ckpt(ckpt, "full")
    arrays, src = _fmnist_embeddings(ckpt, n_db, n_q)
    tx = np.ascontiguousarray(arrays["train_x"], dtype=np.float32)
    d = tx.shape[1]
    return dict(
        xb=truncate(tx, d, normalize=True),
        db_y=arrays["train_y"],
        q=np.ascontiguousarray(arrays["test_x"], dtype=np.float32),
        q_y=arrays["test_y"],
        key=content_key([tx]),
        desc=f"Fashion-MNIST {len(tx):,} x {d} embeddings of {src} ({how})",
        notes=[],
    )


# ----------------------------------------------------------------------------- measurement
def add_lancedb(funnels: dict, built: dict, data: dict[str, Any], folder: Path, n: int) -> None:
    """The funnel as a LanceDB query (IVF-PQ on a 64-d prefix column, full-width rerank),
    when LanceDB is installed; the table is kept under ``folder`` keyed by content."""
    try:
        from mrl.eval.vectordb import lance_funnel
    except ImportError:
        return
    nlist = max(16, min(int(4 * np.sqrt(n)) // 16 * 16, n // 64))
    t0 = time.perf_counter()
    try:
        f = lance_funnel(
            folder, data["key"], data["xb"], data["db_y"], 64, keep=100, k=K,
            index_type="IVF_PQ", num_partitions=nlist, num_sub_vectors=16, nprobes=16,
            refine_factor=2,
        )  # fmt: skip
    except Exception as e:  # noqa: BLE001 - LanceDB missing or failing: no row, a message
        print(f"  lancedb: skipped: {' '.join(str(e).split())[:200]}", flush=True)
        return
    funnels["lancedb_ivfpq_d64_K100"] = f
    built["lancedb_ivfpq_d64_K100"] = {
        "build_seconds": time.perf_counter() - t0,
        "loaded": f.loaded,
    }
    print(f"  lancedb: {f.describe()} in {built['lancedb_ivfpq_d64_K100']['build_seconds']:.1f}s")


def measure(
    name: str, data: dict[str, Any], reps: int, only: list[str] | None = None
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """``(rows, per-config results)`` of one dataset."""
    from mrl.core.nesting import truncate
    from mrl.core.validate import as_matrix
    from mrl.eval.funnel import Funnel
    from mrl.eval.retrieval import map_at_k
    from mrl.eval.search import exact_search

    db_y, q, q_y = data["db_y"], data["q"], data["q_y"]
    xb = as_matrix(data["xb"], "database")  # checked once: timed searches skip the scan
    n, width = xb.shape
    n_q = len(q)

    made: dict[int, np.ndarray] = {width: xb}

    def prefix(d: int) -> np.ndarray:
        """The sliced-then-normalised prefix, from the normalised full vectors (a row's
        scale does not change its prefix's direction); the full width is ``xb`` itself.
        Made once per dim and shared by every funnel (one 128-d store, not one each)."""
        if d not in made:
            made[d] = truncate(xb, d, normalize=True)
        return made[d]

    funnels: dict[str, Funnel] = {}
    built: dict[str, dict[str, Any]] = {}
    folder = cache_dir() / "indexes" / name
    for cname, stages in configs(n, width).items():
        if only and not any(o in cname for o in only):
            continue
        t0 = time.perf_counter()
        try:
            f = Funnel(stages, K, device="cpu").build(
                prefixes=prefix, n=n, width=width, cache_dir=folder, key=data["key"]
            )
        except Exception as e:  # noqa: BLE001 - one config must not stop the others
            print(f"  {cname}: build failed: {e}", flush=True)
            continue
        funnels[cname] = f
        built[cname] = {"build_seconds": time.perf_counter() - t0, "loaded": f.loaded}
        print(f"  {cname}: {f.describe()} built in {built[cname]['build_seconds']:.1f}s"
              f"{' (cache)' if f.loaded else ''}", flush=True)  # fmt: skip

    if not only or any("lancedb" in o for o in only):
        add_lancedb(funnels, built, data, folder, n)

    ids: dict[str, np.ndarray] = {}

    def exact():
        qn = truncate(q, width, normalize=True)
        ids["exact"] = exact_search(xb, qn, K, use_gpu=False, check_finite=False)[1]

    def runner(cname: str):
        def fn():
            ids[cname] = funnels[cname].search(q)[1]

        return fn

    fns = {"exact": exact, **{c: runner(c) for c in funnels}}
    times = interleaved(fns, reps, warmup=1)

    def m_ap(found: np.ndarray) -> float:
        hits = (db_y[found.clip(0)] == q_y[:, None]) & (found >= 0)
        return 100 * float(map_at_k(hits, K).mean())

    exact_map = m_ap(ids["exact"])
    t_exact = median(times["exact"])
    results, rows = [], []
    size = f"{n // 1_000_000}M" if n % 1_000_000 == 0 else f"{n // 1000}k"
    tag = f"{name}_{size}" if name == "synthetic" else name
    full_bytes = 4.0 * width
    for cname, f in funnels.items():
        found = ids[cname]
        rec = float(((found[:, :, None] == ids["exact"][:, None, :]).any(2) & (found >= 0)).mean())
        t = median(times[cname])
        res = {
            "dataset": tag,
            "config": cname,
            "funnel": f.describe(),
            "flat": is_flat(f.as_dict()),
            "mAP10": m_ap(found),
            "exact_mAP10": exact_map,
            "gap_points": exact_map - m_ap(found),
            "recall10": rec,
            "ms_per_1000q": 1000 * t * 1000 / n_q,
            "exact_ms_per_1000q": 1000 * t_exact * 1000 / n_q,
            "speedup": t_exact / t,
            "bytes_per_vector": f.bytes_per_vector(),
            "bytes_vs_float32": f.bytes_per_vector() / full_bytes,
            **built[cname],
        }
        results.append(res)
        target = FLAT_TARGET if res["flat"] else BEST_TARGET
        rows.append(
            row(
                f"pareto/{tag}/{cname}_speedup",
                res["speedup"],
                ">=",
                target,
                interval_of=(times["exact"], times[cname]),
                **{k: v for k, v in res.items() if k not in ("speedup",)},
                note=f"{f.describe()} vs exact top-{K} at {width}; {data['desc']}; {n_q} "
                f"queries, {reps} interleaved rounds, median, {threads()} threads",
            )
        )
    for r in rows:
        r["notes"] = data["notes"]
    if only:  # a partial run: per-config rows only (the summaries need every config)
        return rows, results
    # the targets: best flat / best overall within 0.5 points, memory
    for label, pool, target in (
        ("best_flat", [r for r in results if r["flat"]], FLAT_TARGET),
        ("best", results, BEST_TARGET),
    ):
        ok = [r for r in pool if r["gap_points"] <= GAP_POINTS]
        best = max(ok, key=lambda r: r["speedup"], default=None)
        rows.append(
            row(
                f"pareto/{tag}/{label}_speedup_within_{GAP_POINTS}pts",
                None if best is None else best["speedup"],
                ">=",
                target,
                interval_of=None if best is None else (times["exact"], times[best["config"]]),
                config=None if best is None else best["config"],
                gap_points=None if best is None else best["gap_points"],
                note=f"fastest {'flat (no graph, no clustering) ' if label == 'best_flat' else ''}"
                f"funnel whose mAP@10 is within {GAP_POINTS} points of exact "
                f"({exact_map:.2f}); {len(ok)}/{len(pool)} configurations qualify",
            )
        )
    worst = max(results, key=lambda r: r["bytes_per_vector"], default=None)
    rows.append(
        row(
            f"pareto/{tag}/max_bytes_vs_float32",
            None if worst is None else worst["bytes_vs_float32"],
            "<=",
            BYTES_SLACK,
            config=None if worst is None else worst["config"],
            note=f"largest index bytes/vector over float32 full width ({full_bytes:.0f} B)",
        )
    )
    rows.append(
        row(
            f"pareto/{tag}/peak_rss_gb",
            peak_rss_bytes() / GB,
            "<=",
            12.0,
            unit="GB",
            note="peak RSS of the Pareto bench process so far (all datasets before this one)",
        )
    )
    for r in rows[-4:]:
        r["notes"] = data["notes"]
    return rows, results


# ----------------------------------------------------------------------------- outputs
def pareto_front(results: list[dict[str, Any]]) -> list[str]:
    """Configs no other config beats on both speed-up and mAP@10."""
    return [
        r["config"]
        for r in results
        if not any(
            o["speedup"] >= r["speedup"] and o["mAP10"] >= r["mAP10"] and o is not r
            and (o["speedup"] > r["speedup"] or o["mAP10"] > r["mAP10"])
            for o in results
        )
    ]  # fmt: skip


def write_markdown(path: Path, results: list[dict[str, Any]], header: str) -> None:
    lines = [f"# Funnel retrieval Pareto\n\n{header}\n"]
    for ds in dict.fromkeys(r["dataset"] for r in results):
        rs = [r for r in results if r["dataset"] == ds]
        front = set(pareto_front(rs))
        lines += [
            f"\n## {ds}: exact mAP@10 {rs[0]['exact_mAP10']:.2f}, "
            f"{rs[0]['exact_ms_per_1000q']:.0f} ms per 1,000 queries\n",
            "| config | funnel | mAP@10 | gap (pts) | recall@10 | ms/1000q | speed-up | "
            "bytes/vec | vs f32 | build s | Pareto |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in sorted(rs, key=lambda r: -r["speedup"]):
            lines.append(
                f"| {r['config']} | `{r['funnel']}` | {r['mAP10']:.2f} | {r['gap_points']:+.2f} | "
                f"{r['recall10']:.3f} | {r['ms_per_1000q']:.0f} | {r['speedup']:.1f}x | "
                f"{r['bytes_per_vector']:.0f} | {r['bytes_vs_float32']:.3f} | "
                f"{r['build_seconds']:.1f}{' (cache)' if r['loaded'] else ''} | "
                f"{'*' if r['config'] in front else ''} |"
            )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


def write_plot(path: Path, results: list[dict[str, Any]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sets = list(dict.fromkeys(r["dataset"] for r in results))
    fig, axes = plt.subplots(1, len(sets), figsize=(7 * len(sets), 5), squeeze=False)
    for ax, ds in zip(axes[0], sets, strict=True):
        rs = [r for r in results if r["dataset"] == ds]
        for r in rs:
            ax.scatter(r["speedup"], r["mAP10"], marker="o" if r["flat"] else "^",
                       color="tab:blue" if r["flat"] else "tab:orange")  # fmt: skip
            ax.annotate(r["config"], (r["speedup"], r["mAP10"]), fontsize=7)
        front = sorted(
            (r for r in rs if r["config"] in pareto_front(rs)), key=lambda r: r["speedup"]
        )
        ax.plot([r["speedup"] for r in front], [r["mAP10"] for r in front], "k--", lw=0.8)
        ex = rs[0]["exact_mAP10"]
        ax.axhline(ex, color="gray", lw=0.8, label=f"exact {ex:.2f}")
        ax.axhline(ex - GAP_POINTS, color="gray", lw=0.8, ls=":", label=f"exact - {GAP_POINTS}")
        for t in (FLAT_TARGET, BEST_TARGET):
            ax.axvline(t, color="red", lw=0.6, ls=":")
        ax.set_xscale("log")
        ax.set_xlabel("speed-up vs exact full-width search (log)")
        ax.set_ylabel("mAP@10 (%)")
        ax.set_title(f"{ds} (circles: flat, triangles: graph/IVF)")
        ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def merge_rows(path: Path, rows: list[dict[str, Any]]) -> None:
    """Replace rows of the same names in ``path`` (a JSON list), keep the others."""
    from .runner import write_json

    old = json.loads(path.read_text()) if path.is_file() else []
    names = {r["name"] for r in rows}
    write_json(path, [r for r in old if r.get("name") not in names] + rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m scripts.bench.pareto", description=__doc__)
    ap.add_argument("--n", type=int, default=1_000_000, help="synthetic database size")
    ap.add_argument("--dim", type=int, default=2048, help="synthetic width")
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--reps", type=int, default=3, help="timed rounds (after one warm-up)")
    ap.add_argument("--threads", type=int, default=None, help="FAISS/torch threads (default 2)")
    ap.add_argument("--only", nargs="+", help="configs whose name contains one of these")
    ap.add_argument("--skip-synthetic", action="store_true")
    ap.add_argument("--skip-fmnist", action="store_true")
    ap.add_argument("--fmnist-ckpt", default=None, help="trained checkpoint (default: see doc)")
    ap.add_argument("--fmnist-db", type=int, default=60_000, help="Fashion-MNIST database rows")
    ap.add_argument("--out", type=Path, default=Path("results/bench.json"))
    ap.add_argument("--md", type=Path, default=Path("results/bench_retrieval.md"))
    ap.add_argument("--png", type=Path, default=Path("results/bench_retrieval.png"))
    a = ap.parse_args(argv)
    if a.threads is not None:
        os.environ[THREADS_ENV] = str(a.threads)
    set_threads()
    rows: list[dict[str, Any]] = []
    results: list[dict[str, Any]] = []
    sets = []
    if not a.skip_synthetic:
        sets.append(("synthetic", lambda: synthetic_database(a.n, a.dim, a.queries)))
    if not a.skip_fmnist:
        sets.append(("fmnist", lambda: fmnist_database(a.fmnist_ckpt, a.fmnist_db, a.queries)))
    descs = []
    for name, load in sets:
        t0 = time.perf_counter()
        print(f"[pareto] {name}: loading ...", flush=True)
        data = load()
        descs.append(f"- {name}: {data['desc']} (loaded in {time.perf_counter() - t0:.0f}s)")
        got_rows, got = measure(name, data, a.reps, a.only)
        del data
        for r in got_rows:
            r.setdefault("group", "pareto")
        rows += got_rows
        results += got
        merge_rows(a.out, got_rows)
        for r in got:
            print(
                f"  {r['config']:28s} mAP@10 {r['mAP10']:6.2f} (exact {r['exact_mAP10']:.2f}, "
                f"gap {r['gap_points']:+.2f})  recall {r['recall10']:.3f}  "
                f"{r['ms_per_1000q']:8.0f} ms/1000q  {r['speedup']:7.1f}x  "
                f"{r['bytes_per_vector']:7.0f} B/vec  build {r['build_seconds']:.1f}s",
                flush=True,
            )
    header = (
        f"{a.queries} queries, k={K}, {a.reps} interleaved rounds (median), {threads()} "
        f"threads; speed-up = exact full-width search time / funnel time, same process.\n"
        + "\n".join(descs)
    )
    # the table and plot show every dataset measured so far: this run's rows replace older
    # ones of the same name, and a dataset measured in full now drops all its older rows
    # (configurations since renamed or removed)
    if a.out.is_file():
        names = {r["name"] for r in rows}
        redone = set() if a.only else {r["dataset"] for r in results}
        older = [
            {k: r[k] for k in r if k != "name"} | {"speedup": r["value"]}
            for r in json.loads(a.out.read_text())
            if r.get("group") == "pareto" and "flat" in r and r["name"] not in names
            and r.get("dataset") not in redone
        ]  # fmt: skip
        results = older + results
    if results:
        write_markdown(a.md, results, header)
        write_plot(a.png, results)
    from .runner import table

    print(f"\n{table(rows)}\n\nrows in {a.out}, table {a.md}, plot {a.png}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
