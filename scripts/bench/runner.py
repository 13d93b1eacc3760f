"""Performance benchmarks of the MRL framework (issue 5): one table of measured ratios.

Usage::

    python -m scripts.bench [--quick | --smoke] [--only NAME ...] [--out results/bench.json]
    python -m scripts.bench --gpu [--quick]        # GPU rows only (scripts/gpu_bench.sh)

Every row is a ratio (or a memory figure) whose sides are measured in the same run, with
interleaved repetitions and the median, plus its target and whether it is met. The rows
also go to ``--out`` as a JSON list of ``{name, value, target, met, unit, note, ...}``
(written after each group, so an interrupted run keeps what it measured).

Groups (``--only`` takes group names, or prefixes of them: ``eval`` is the one group,
``ev`` both ``eval`` groups):

  train_resnet18   MRL / MRL-E training step vs plain (ff_dim = width), resnet18 28 px
  train_resnet50   the same, resnet50 at 224 px, 3 channels, small batch
  heads            MRL-E heads: one pass over all prefixes vs a loop over prefixes
  eval             kNN + retrieval + linear probe: every prefix vs only the largest
  eval_fmnist      eval.py's work on real Fashion-MNIST (one embedding pass + evaluators):
                   every prefix vs only the largest, end to end
  adaptive_1m      adaptive retrieval over 1M x 2048 vectors (own process: its peak RSS)
  adaptive_fmnist  adaptive vs exact mAP@10 on real Fashion-MNIST embeddings
  pipeline         default loader vs default training step, and that process's peak RSS
  ddp_cpu          1 vs 2 CPU processes (trainer=ddp_cpu): train.py wall-clock and test/top1,
                   eval.py devices=2 vs 1 metrics (only with --only ddp_cpu: whole runs)
  gpu              GPU rows (only with --gpu or --only gpu)

Scales: default = the full benchmark (about 15 minutes on an idle 2-core machine, more
when it is shared; the million-vector file is generated once into $MRL_BENCH_CACHE,
default ~/.cache/mrl/bench); ``--quick`` = smaller sizes, under 2 minutes; ``--smoke`` =
tiny sizes for the tests (the numbers mean nothing; the "resnet50" group uses a resnet18
at 32 px there). CPU benchmarks use 2 threads (``--threads``; 1 with ``--smoke``: on a
busy machine every 2-thread parallel region waits for a descheduled thread).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]

from .common import THREADS_ENV, error_row  # noqa: E402

# Sizes per scale. full: as the issue asks; quick: < 2 min on a busy 2-core machine.
SCALES: dict[str, dict[str, dict[str, Any]]] = {
    "full": {
        "train_resnet18": dict(batch=256, reps=15),
        "train_resnet50": dict(batch=8, reps=11, img_size=224),
        "heads": dict(n=4096, width=2048, num_classes=1000, reps=7),
        "eval": dict(n=60_000, n_queries=10_000, width=512, reps=2),
        "eval_fmnist": dict(n_db=None, n_q=None, val_size=5000, reps=2),
        "adaptive_1m": dict(n=1_000_000, d=2048, n_queries=1000, reps=3),
        "adaptive_fmnist": dict(n_db=10_000, n_q=2_000),
        "pipeline": dict(batch=256, reps=3, loader_batches=20),
        "gpu": dict(batch=256, steps=10, reps=5, faiss_n=1_000_000, faiss_queries=1000),
        "ddp_cpu": dict(subset=10_000, batch=128, epochs=1, test_subset=2_000),
    },
    "quick": {
        "train_resnet18": dict(batch=8, reps=2),
        "train_resnet50": dict(batch=1, reps=2, img_size=224),
        "heads": dict(n=1024, width=2048, num_classes=1000, reps=3),
        "eval": dict(n=10_000, n_queries=1_000, width=512, reps=1),
        "eval_fmnist": dict(n_db=1_000, n_q=500, val_size=0, reps=1),
        "adaptive_1m": dict(n=50_000, d=2048, n_queries=200, reps=2),
        "adaptive_fmnist": dict(n_db=1_000, n_q=200),
        "pipeline": dict(batch=16, reps=2, loader_batches=10),
        "gpu": dict(batch=128, steps=5, reps=3, faiss_n=200_000, faiss_queries=500),
        "ddp_cpu": dict(subset=1_000, batch=64, epochs=1, test_subset=500),
    },
    "smoke": {
        "train_resnet18": dict(batch=2, reps=2),
        "train_resnet50": dict(batch=2, reps=2, img_size=32, model="resnet18"),
        "heads": dict(n=128, width=64, num_classes=10, reps=2),
        "eval": dict(n=1_000, n_queries=100, width=64, reps=2),
        "eval_fmnist": dict(n_db=200, n_q=300, val_size=0, reps=1),
        "adaptive_1m": dict(n=5_000, d=256, n_queries=50, reps=1),
        "adaptive_fmnist": dict(n_db=200, n_q=40),
        "pipeline": dict(batch=4, reps=1, loader_batches=2),
        "gpu": dict(batch=8, steps=2, reps=1, faiss_n=10_000, faiss_queries=50),
        "ddp_cpu": dict(subset=64, batch=32, epochs=1, test_subset=64),
    },
}
CPU_GROUPS = [
    "train_resnet18",
    "train_resnet50",
    "heads",
    "eval",
    "eval_fmnist",
    "adaptive_1m",
    "adaptive_fmnist",
    "pipeline",
]
OPT_IN_GROUPS = ["ddp_cpu"]  # minutes of whole train.py runs: only with --only
SUBPROCESS_GROUPS = {"adaptive_1m", "pipeline"}  # peak RSS must be their own
TIMEOUT_S = {"adaptive_1m": 1500, "pipeline": 900}


def run_group(group: str, scale: str, opts: argparse.Namespace) -> list[dict[str, Any]]:
    """Run one benchmark group in this process and return its rows."""
    p = dict(SCALES[scale][group])
    if group == "train_resnet18":
        from .training import train_overhead

        return train_overhead(f"resnet18_28px_b{p['batch']}", "resnet18", 28, 1, 10, **p)
    if group == "train_resnet50":
        from .training import train_overhead

        size, model = p.pop("img_size"), p.pop("model", "resnet50")
        return train_overhead(f"{model}_{size}px_b{p['batch']}", model, size, 3, 1000, **p)
    if group == "heads":
        from .training import heads

        return heads(**p)
    if group == "eval":
        from .evaluation import eval_prefixes

        return eval_prefixes(**p)
    if group == "eval_fmnist":
        from .evaluation import eval_fmnist

        return eval_fmnist(**p, ckpt=opts.fmnist_ckpt)
    if group == "adaptive_1m":
        from .retrieval import adaptive_1m

        return adaptive_1m(**p)
    if group == "adaptive_fmnist":
        from .retrieval import adaptive_fmnist

        return adaptive_fmnist(**p, ckpt=opts.fmnist_ckpt, scale=scale)
    if group == "pipeline":
        from .training import pipeline

        return pipeline(**p)
    if group == "ddp_cpu":
        from .distributed import ddp_cpu

        return ddp_cpu(**p)
    if group == "gpu":
        from .gpu import gpu_rows

        return gpu_rows(**p, budget_s=opts.gpu_budget_s, do_compile=not opts.no_compile)
    raise ValueError(f"unknown group {group!r}")


def run_in_subprocess(group: str, scale: str, opts: argparse.Namespace) -> list[dict[str, Any]]:
    """``group`` in a fresh Python process (its own peak RSS); rows come back as JSON."""
    with tempfile.TemporaryDirectory(prefix="mrl-bench-") as tmp:
        out = Path(tmp) / "rows.json"
        cmd = [sys.executable, "-m", "scripts.bench", "--worker", group]
        cmd += ["--scale", scale, "--worker-out", str(out)]
        if opts.fmnist_ckpt:
            cmd += ["--fmnist-ckpt", opts.fmnist_ckpt]
        proc = subprocess.run(cmd, timeout=TIMEOUT_S.get(group, 900), check=False, cwd=ROOT)
        if proc.returncode != 0 or not out.is_file():
            raise RuntimeError(f"worker {group!r} exited with status {proc.returncode}")
        return json.loads(out.read_text())


# ----------------------------------------------------------------------------- output
def fmt_value(r: dict[str, Any]) -> str:
    v = r.get("value")
    if v is None:
        return "skipped" if r.get("skipped") else "error"
    if isinstance(v, float) and math.isnan(v):
        return "nan"
    unit = r.get("unit", "")
    if unit == "x":
        return f"{v:.3f}x"
    if unit == "GB":
        return f"{v:.2f} GB"
    if unit == "points":
        return f"{v:+.2f} pts"
    return f"{v:.4g} {unit}".strip()


def fmt_interval(r: dict[str, Any]) -> str:
    """``[low, high]`` of a timed ratio (95% paired bootstrap), ``-`` when the row has none."""
    if r.get("low") is None or r.get("high") is None:
        return "-"
    return f"[{fmt_value({**r, 'value': r['low']})}, {fmt_value({**r, 'value': r['high']})}]"


def table(rows: list[dict[str, Any]]) -> str:
    head = ("name", "value", "interval(95%)", "target", "verdict")
    body = [
        (
            r["name"],
            fmt_value(r),
            fmt_interval(r),
            r.get("target", "-"),
            "skipped" if r.get("skipped") else r.get("verdict", "yes" if r.get("met") else "NO"),
        )
        for r in rows
    ]
    widths = [max(len(str(x[i])) for x in [head, *body]) for i in range(len(head))]
    line = "  ".join("-" * w for w in widths)
    out = ["  ".join(str(h).ljust(w) for h, w in zip(head, widths, strict=True)), line]
    out += ["  ".join(str(c).ljust(w) for c, w in zip(b, widths, strict=True)) for b in body]
    return "\n".join(out)


def notes(rows: list[dict[str, Any]]) -> str:
    lines = []
    for r in rows:
        text = r.get("error") or r.get("skipped") or r.get("note")
        if text:
            lines.append(f"- {r['name']}: {text}")
    return "\n".join(lines)


def write_json(path: Path, rows: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(rows, indent=2, default=_jsonable) + "\n")
    tmp.replace(path)


def _jsonable(o: Any) -> Any:
    if hasattr(o, "item"):
        return o.item()
    if hasattr(o, "tolist"):
        return o.tolist()
    return str(o)


# ----------------------------------------------------------------------------- CLI
def select(only: list[str] | None, gpu: bool) -> list[str]:
    groups = ["gpu"] if gpu else list(CPU_GROUPS)
    if not only:
        return groups
    every = [*CPU_GROUPS, *OPT_IN_GROUPS, "gpu"]
    chosen = []
    for name in only:
        hits = [name] if name in every else [g for g in every if g.startswith(name)]
        if not hits:
            raise SystemExit(f"--only {name!r}: no such benchmark; choose from {every}")
        chosen += [g for g in hits if g not in chosen]
    return chosen


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="python -m scripts.bench", description=__doc__.split("\n\n")[0]
    )
    size = ap.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="smaller sizes, under 2 minutes")
    size.add_argument(
        "--smoke", action="store_true", help="tiny sizes (tests); numbers mean nothing"
    )
    ap.add_argument("--only", nargs="+", metavar="NAME", help="groups (or prefixes) to run")
    ap.add_argument(
        "--out", type=Path, default=None, help="JSON output (default results/bench.json)"
    )
    ap.add_argument("--gpu", action="store_true", help="run the GPU rows only")
    ap.add_argument("--gpu-budget-s", type=float, default=450.0, help="time budget of --gpu")
    ap.add_argument("--no-compile", action="store_true", help="--gpu: skip torch.compile")
    ap.add_argument(
        "--fmnist-ckpt",
        default=os.environ.get("MRL_BENCH_FMNIST_CKPT"),
        help="trained MRL checkpoint for eval_fmnist and adaptive_fmnist (default: random-init "
        "resnet18)",
    )
    ap.add_argument(
        "--in-process",
        action="store_true",
        help="run every group in this process (faster start; peak-RSS rows then cover the run)",
    )
    ap.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch/FAISS threads of the CPU benchmarks (default 2; 1 with --smoke)",
    )
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--worker-out", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--scale", choices=list(SCALES), help=argparse.SUPPRESS)
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(argv)
    scale = opts.scale or ("smoke" if opts.smoke else "quick" if opts.quick else "full")
    if opts.threads is not None or scale == "smoke":  # workers inherit the environment
        os.environ[THREADS_ENV] = str(opts.threads or 1)
    if opts.worker:  # internal: one group in this (fresh) process
        try:
            got = run_group(opts.worker, scale, opts)
        except Exception as e:  # noqa: BLE001 - the parent reports it as an error row
            traceback.print_exc()
            got = [error_row(opts.worker, e)]
        write_json(opts.worker_out, got)
        return 0
    out = opts.out or Path("results/gpu_bench.json" if opts.gpu else "results/bench.json")
    groups = select(opts.only, opts.gpu)
    rows: list[dict[str, Any]] = []
    failed = False
    t_all = time.perf_counter()
    print(f"mrl benchmarks ({scale}): {', '.join(groups)}", flush=True)
    for group in groups:
        t = time.perf_counter()
        print(f"[{group}] running ...", flush=True)
        try:
            if group in SUBPROCESS_GROUPS and not opts.in_process:
                got = run_in_subprocess(group, scale, opts)
            else:
                got = run_group(group, scale, opts)
        except Exception as e:  # noqa: BLE001 - one broken group must not hide the others
            traceback.print_exc()
            got = [error_row(group, e)]
        failed = failed or any("error" in r for r in got)
        dt = time.perf_counter() - t
        for r in got:
            r.setdefault("group", group)
            r.setdefault("group_seconds", round(dt, 1))
            r.setdefault("scale", scale)
            if group in SUBPROCESS_GROUPS and opts.in_process and r["name"].startswith("peak_"):
                r["note"] = "IN-PROCESS (--in-process): the whole bench run's peak; " + r["note"]
        rows += got
        write_json(out, rows)
        print(f"[{group}] {dt:.1f}s", flush=True)
        for r in got:
            print(f"    {r['name']}: {fmt_value(r)} (target {r.get('target', '-')})", flush=True)
    print(f"\n{table(rows)}\n\nnotes:\n{notes(rows)}")
    met = sum(r.get("verdict") == "met" for r in rows)
    print(
        f"\n{met}/{len(rows)} targets met; {time.perf_counter() - t_all:.0f}s; "
        f"{scale} scale; rows in {out}"
    )
    return 1 if failed else 0
