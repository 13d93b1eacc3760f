"""Evaluation benchmark: every prefix against only the largest, from the same cached arrays.

Both sides call :func:`mrl.evaluate.run_evaluators` with kNN + retrieval + linear probe on
the same in-memory embeddings; only ``dims`` differs (``[8, 16, ..., width]`` vs
``[width]``). The evaluators' own per-stage seconds (search, knn, retrieval, probe) are kept
in the row, which is the profile of where the extra time goes.
"""

from __future__ import annotations

from typing import Any

from bench_common import Synthetic, interleaved, median, row, set_threads

EVALUATORS = {"knn": {}, "retrieval": {}, "probe": {}}


def eval_prefixes(n: int, n_queries: int, width: int, reps: int) -> list[dict[str, Any]]:
    from mrl.dims import auto_dims
    from mrl.evaluate import run_evaluators

    set_threads(2)
    synth = Synthetic(width, 10, seed=1)
    arrays = synth.dataset(n, n_queries)
    dims_all = auto_dims(width)
    warm_rows = 2000  # rows of each split in the warm-up slice (>= the largest retrieval k)
    secs: dict[str, list[dict[str, float]]] = {"all": [], "largest": []}
    # warm up every code path once on a small slice, so that neither side pays first-call
    # costs (the first linear_probe call in a process measured about 2x a later one)
    small = {k: v[:warm_rows] for k, v in arrays.items()}
    run_evaluators(small, EVALUATORS, dims_all, 10)

    def run(dims, key):
        def f():
            _, s = run_evaluators(arrays, EVALUATORS, dims, 10)
            secs[key].append(s)

        return f

    times = interleaved(
        {"all": run(dims_all, "all"), "largest": run([width], "largest")}, reps, warmup=0
    )
    t_all, t_one = median(times["all"]), median(times["largest"])

    def stage_medians(key):
        stages = secs[key][0].keys()
        return {k: round(median([s[k] for s in secs[key]]), 3) for k in stages}

    return [
        row(
            "eval/all_prefixes_vs_largest",
            t_all / t_one,
            "<=",
            1.5,
            seconds=t_all,
            seconds_largest=t_one,
            stages_all=stage_medians("all"),
            stages_largest=stage_medians("largest"),
            dims=dims_all,
            note=(
                f"run_evaluators(knn + retrieval + probe) on {n} x {width} database / "
                f"{n_queries} queries, dims {dims_all[0]}..{width} ({len(dims_all)}) vs [{width}]; "
                f"{synth.describe()} (10 classes); one warm-up call on {warm_rows} rows "
                f"first; {reps} interleaved reps, median"
            ),
        )
    ]
