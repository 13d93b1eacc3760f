"""GPU search benchmark (``bash scripts/gpu_bench.sh --search``): exact vs funnel retrieval.

A synthetic database of ``--n`` x ``--dim`` float32 vectors (default 1M x 2048, the paper's
adaptive-retrieval scale) and ``--queries`` queries; :func:`mrl.eval.adaptive.adaptive_retrieval`
with ``device="cuda"`` times, on the GPU, the exact search at the full width against the
funnel (shortlist ``--shortlist-k`` at ``--d-shortlist`` dims, rerank at the full width).
Reports queries/s of both, the backend (FAISS GPU when ``faiss.get_num_gpus() > 0``, else
torch; ``--backend torch`` forces torch) and the funnel's overlap with the exact top-k.
Random vectors: a throughput measurement, not an accuracy one.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="gpu_bench.sh --search", description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=1_000_000, help="database rows")
    p.add_argument("--dim", type=int, default=2048, help="embedding width")
    p.add_argument("--queries", type=int, default=10_000)
    p.add_argument("--d-shortlist", type=int, default=16)
    p.add_argument("--shortlist-k", type=int, default=200)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--backend", choices=("auto", "torch"), default="auto")
    p.add_argument("--out", type=Path, default=Path("results/gpu_search_bench.json"))
    p.add_argument("--dry-run", action="store_true", help="print the plan, run nothing")
    a = p.parse_args(argv)
    for name in ("n", "dim", "queries", "d_shortlist", "shortlist_k", "k", "repeats"):
        if getattr(a, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    if a.d_shortlist > a.dim or a.shortlist_k > a.n or a.k > a.shortlist_k:
        p.error("need --d-shortlist <= --dim, --shortlist-k <= --n and --k <= --shortlist-k")
    return a


def main(argv: list[str] | None = None) -> int:
    a = parse(argv)
    gb = a.n * a.dim * 4 / 2**30
    plan = (
        f"exact vs funnel search on the GPU: {a.n:,} x {a.dim} ({gb:.1f} GiB float32), "
        f"{a.queries:,} queries, funnel [({a.d_shortlist}, {a.shortlist_k}), ({a.dim}, {a.k})], "
        f"{a.repeats} repeats (median), backend {a.backend}"
    )
    print(plan)
    if a.dry_run:
        return 0
    import numpy as np
    import torch

    from mrl.eval import search
    from mrl.eval.adaptive import adaptive_retrieval

    if not torch.cuda.is_available():
        print("gpu_bench --search: no CUDA GPU visible to torch; this benchmark needs one")
        return 1
    if a.backend == "torch":
        search.faiss_has_gpu = lambda: False  # type: ignore[assignment]
    backend = search.search_backend("cuda")
    t = time.time()
    g = torch.Generator(device="cuda").manual_seed(0)
    db = torch.randn(a.n, a.dim, generator=g, device="cuda").cpu().numpy()
    qs = torch.randn(a.queries, a.dim, generator=g, device="cuda").cpu().numpy()
    rng = np.random.default_rng(0)
    db_y, q_y = rng.integers(0, 1000, a.n), rng.integers(0, 1000, a.queries)
    print(
        f"data ready in {time.time() - t:.1f} s; backend {backend}; {torch.cuda.get_device_name()}"
    )
    res = adaptive_retrieval(
        db,
        db_y,
        qs,
        q_y,
        d_shortlist=a.d_shortlist,
        d_rerank=a.dim,
        shortlist_k=a.shortlist_k,
        k=a.k,
        repeats=a.repeats,
        device="cuda",
    )
    row = {
        "plan": plan,
        "backend": backend,
        "gpu": torch.cuda.get_device_name(),
        "exact_queries_per_s": a.queries / res["adaptive_ret/exact_seconds"],
        "funnel_queries_per_s": a.queries / res["adaptive_ret/seconds"],
        "speedup": res["adaptive_ret/speedup"],
        "flops_ratio": res["adaptive_ret/flops_ratio"],
        f"overlap@{a.k}": res[f"adaptive_ret/overlap@{a.k}"],
    }
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(row, indent=2) + "\n")
    for key, v in row.items():
        print(f"  {key}: {v:,.1f}" if isinstance(v, float) else f"  {key}: {v}")
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
