"""Shared pieces of the benchmarks (:mod:`scripts.bench`): rows, interleaved timing, peak RSS, synthetic data.

A *row* is one measured ratio (or memory figure) with its target::

    {"name": ..., "value": 1.012, "target": "<= 1.05", "met": true, "unit": "x",
     "low": 0.98, "high": 1.04, "verdict": "met", ...extras}

``value`` is the point estimate (a ratio of medians). Timed ratios also carry ``low`` /
``high``: a 95% paired-bootstrap interval of that ratio over the interleaved rounds (round
``i`` of both sides ran back to back, so rounds are resampled together). ``verdict`` is
``met`` when the whole interval satisfies the target, ``not met`` when none of it does and
``undecided`` when it straddles the target; a row without an interval (an accuracy, a memory
figure, a single whole run) is judged on its value. ``met`` keeps the point-estimate test.

Timing rules used by every CPU benchmark: both sides run in the same process, their
repetitions are interleaved (A B C A B C ...) so that load drift on a shared machine hits all
of them alike, the first ``warmup`` rounds are dropped and the median is reported.
"""

from __future__ import annotations

import math
import os
import resource
import statistics
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

GB = 1e9
CACHE_ENV = "MRL_BENCH_CACHE"


# ----------------------------------------------------------------------------- rows
def ratio_interval(
    num: list[float], den: list[float], level: float = 0.95, n_boot: int = 4000, seed: int = 0
) -> tuple[float, float]:
    """Paired-bootstrap interval of ``median(num) / median(den)`` (rounds resampled together)."""
    a, b = np.asarray(num, dtype=np.float64), np.asarray(den, dtype=np.float64)
    if len(a) != len(b) or len(a) < 2:
        raise ValueError("need two or more paired rounds")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(a), size=(n_boot, len(a)))
    ratios = np.median(a[idx], axis=1) / np.median(b[idx], axis=1)
    tail = (1 - level) / 2
    return float(np.quantile(ratios, tail)), float(np.quantile(ratios, 1 - tail))


def verdict(
    value: float | None, op: str, threshold: float, low: float | None, high: float | None
) -> str:
    """``met`` / ``not met`` / ``undecided`` (see the module docstring)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "not met"
    if low is None or high is None:
        low = high = value
    if op == "<=":
        ok, bad = high <= threshold, low > threshold
    elif op == ">=":
        ok, bad = low >= threshold, high < threshold
    elif op == "|x| <=":
        ok = max(abs(low), abs(high)) <= threshold
        bad = low > threshold or high < -threshold
    else:
        raise ValueError(f"unknown comparison {op!r}")
    return "met" if ok else "not met" if bad else "undecided"


def row(
    name: str,
    value: float | None,
    op: str,
    threshold: float,
    unit: str = "x",
    interval_of: tuple[list[float], list[float]] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """A result row; ``met`` is ``value op threshold`` (False when value is None/NaN).

    ``op`` is ``"<="``, ``">="`` or ``"|x| <="`` (absolute value within the threshold).
    ``interval_of=(num_times, den_times)``: the per-round times whose median ratio is
    ``value``; adds ``low`` / ``high`` (:func:`ratio_interval`) and decides ``verdict``.
    """
    ok = value is not None and not (isinstance(value, float) and math.isnan(value))
    if ok and op == "<=":
        met = value <= threshold
    elif ok and op == ">=":
        met = value >= threshold
    elif ok and op == "|x| <=":
        met = abs(value) <= threshold
    elif ok:
        raise ValueError(f"unknown comparison {op!r}")
    else:
        met = False
    low = high = None
    if interval_of is not None and ok and len(interval_of[0]) >= 2:
        low, high = ratio_interval(*interval_of)
    return {
        "name": name,
        "value": None if value is None else float(value),
        "target": f"{op} {threshold:g}",
        "met": bool(met),
        "low": low,
        "high": high,
        "verdict": verdict(None if not ok else float(value), op, threshold, low, high),
        "unit": unit,
        "target_op": op,
        "target_value": float(threshold),
        **extra,
    }


def error_row(name: str, exc: BaseException | str) -> dict[str, Any]:
    """A row for a benchmark that could not run: value null, met false, the error kept."""
    msg = exc if isinstance(exc, str) else f"{type(exc).__name__}: {exc}"
    msg = " ".join(str(msg).split())[:400]
    return {
        "name": name,
        "value": None,
        "target": "-",
        "met": False,
        "verdict": "not met",
        "error": msg,
    }


# ----------------------------------------------------------------------------- timing
def interleaved(
    fns: Mapping[str, Callable[[], Any]],
    reps: int,
    warmup: int = 1,
    sync=None,
    cpu_times: dict[str, list[float]] | None = None,
) -> dict[str, list[float]]:
    """Wall-clock seconds per call of each function, rounds interleaved: A B C A B C ...

    The first ``warmup`` rounds are run but not recorded. ``sync`` (e.g.
    ``torch.cuda.synchronize``) is called before each clock read. ``cpu_times``, when
    given, is filled with the process CPU seconds of the same calls (all threads): less
    sensitive to other processes taking the cores, more to threads spinning while waiting.
    """
    times: dict[str, list[float]] = {k: [] for k in fns}
    for r in range(warmup + reps):
        for name, fn in fns.items():
            if sync:
                sync()
            t, c = time.perf_counter(), time.process_time()
            fn()
            if sync:
                sync()
            if r >= warmup:
                times[name].append(time.perf_counter() - t)
                if cpu_times is not None:
                    cpu_times.setdefault(name, []).append(time.process_time() - c)
    return times


def median(xs: list[float]) -> float:
    return float(statistics.median(xs))


def spread(xs: list[float]) -> float:
    """(max - min) / median of the repetitions: how noisy the measurement was."""
    m = median(xs)
    return float((max(xs) - min(xs)) / m) if m > 0 else float("nan")


# ----------------------------------------------------------------------------- memory
def peak_rss_bytes() -> int:
    """Peak resident set size of *this process* (``VmHWM``; ru_maxrss as a fallback).

    ``VmHWM`` belongs to the current address space, so a subprocess started with exec does
    not inherit its parent's peak (``ru_maxrss`` can, across fork + exec).
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def mem_available_bytes() -> int | None:
    """``MemAvailable`` from /proc/meminfo (None where unavailable)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def cache_dir() -> Path:
    """Where generated data and embeddings are kept between runs ($MRL_BENCH_CACHE)."""
    d = Path(os.environ.get(CACHE_ENV, "~/.cache/mrl/bench")).expanduser()
    d.mkdir(parents=True, exist_ok=True)
    return d


THREADS_ENV = "MRL_BENCH_THREADS"


def threads() -> int:
    """Threads of the CPU benchmarks: $MRL_BENCH_THREADS, default 2 (``--threads``)."""
    return int(os.environ.get(THREADS_ENV, "2"))


def set_threads(n: int | None = None) -> None:
    """Same thread count for torch and FAISS (default :func:`threads`, i.e. 2)."""
    import torch

    n = threads() if n is None else n
    torch.set_num_threads(n)
    try:
        import faiss

        faiss.omp_set_num_threads(n)
    except ImportError:
        pass


# ----------------------------------------------------------------------------- synthetic data
# Matryoshka-like synthetic embeddings: x_j = scale_j * (centre[y]_j + noise_j * eps_j)
#   scale_j = (j + 1) ** -0.5      (energy decays with the index: early dims dominate cosine)
#   noise_j = 0.3 * (j + 1) ** 0.4 (class signal-to-noise decays with the index)
# so a 16-d prefix already clusters the classes (about 2/3 of the full width's mAP@10 on its
# own) while the full width is best, as in a trained MRL model.
SYNTH = {"alpha": 0.5, "noise0": 0.3, "beta": 0.4}


class Synthetic:
    """Deterministic class-clustered Matryoshka-like vectors, generated chunk by chunk."""

    def __init__(self, dim: int, num_classes: int, seed: int = 0) -> None:
        self.dim, self.num_classes, self.seed = dim, num_classes, seed
        j = np.arange(dim, dtype=np.float32) + 1
        self.scale = (j ** -SYNTH["alpha"]).astype(np.float32)
        self.noise = (SYNTH["noise0"] * j ** SYNTH["beta"]).astype(np.float32)
        rng = np.random.default_rng([seed, 0])
        self.centers = rng.standard_normal((num_classes, dim), dtype=np.float32)

    def describe(self) -> str:
        return (
            f"synthetic Matryoshka-like: {self.num_classes} class centres ~ N(0, 1), "
            f"x_j = (j+1)^-{SYNTH['alpha']} * (centre_j + {SYNTH['noise0']}*(j+1)^{SYNTH['beta']}"
            f" * N(0, 1)), seed {self.seed}"
        )

    def chunk(self, n: int, stream: int) -> tuple[np.ndarray, np.ndarray]:
        """``n`` vectors (float32, raw) and labels; ``stream`` selects an independent draw."""
        rng = np.random.default_rng([self.seed, 1, stream])
        y = rng.integers(0, self.num_classes, n)
        x = rng.standard_normal((n, self.dim), dtype=np.float32)
        x *= self.noise
        x += self.centers[y]
        x *= self.scale
        return x, y.astype(np.int64)

    def chunks(self, n: int, chunk: int, stream0: int = 1000) -> Iterator[tuple]:
        """``(start, x, y)`` for rows ``0..n`` in blocks of ``chunk`` (stream per block)."""
        for b, start in enumerate(range(0, n, chunk)):
            x, y = self.chunk(min(chunk, n - start), stream0 + b)
            yield start, x, y

    def dataset(self, n: int, n_queries: int) -> dict[str, np.ndarray]:
        """In-memory ``train_x/train_y/test_x/test_y`` (database and queries)."""
        tx, ty = self.chunk(n, 1)
        qx, qy = self.chunk(n_queries, 2)
        return {"train_x": tx, "train_y": ty, "test_x": qx, "test_y": qy}
