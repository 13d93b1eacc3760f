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
                f"evaluators only (no embedding pass): run_evaluators(knn + retrieval + probe) "
                f"on {n} x {width} database / "
                f"{n_queries} queries, dims {dims_all[0]}..{width} ({len(dims_all)}) vs [{width}]; "
                f"{synth.describe()} (10 classes); one warm-up call on {warm_rows} rows "
                f"first; {reps} interleaved reps, median"
            ),
        )
    ]


#: the per-prefix evaluators of ``eval.py`` (the adaptive ones are not per prefix)
EVALUATORS_FMNIST = {"linear": {}, "probe": {}, "knn": {}, "retrieval": {}, "fewshot": {}}


def eval_fmnist(
    n_db: int | None, n_q: int | None, val_size: int, reps: int, ckpt: str | None = None
) -> list[dict[str, Any]]:
    """``eval.py``'s work on real Fashion-MNIST: one embedding pass, then the evaluators.

    The embedding pass is timed once (it is the same full-width pass whichever prefixes
    are evaluated); the evaluators at every trained prefix and at the largest alone are
    timed in interleaved reps. Value: ``(embed + all) / (embed + largest)``.
    """
    import time

    from bench_retrieval import fmnist_module

    from mrl.data import FashionMNISTDataModule
    from mrl.evaluate import compute_embeddings, match_data, run_evaluators

    set_threads(2)
    module, src, _ = fmnist_module(ckpt)
    dm = FashionMNISTDataModule(
        subset=n_db, test_subset=n_q, val_size=val_size, download=False, seed=0
    )
    match_data(module, dm)
    t0 = time.perf_counter()
    arrays = compute_embeddings(module, dm, "cpu")
    t_embed = time.perf_counter() - t0
    dims_all = list(module.dims)
    width = dims_all[-1]
    warm = {k: v[:2000] for k, v in arrays.items()}
    run_evaluators(warm, EVALUATORS_FMNIST, dims_all, 10, module)
    secs: dict[str, list[dict[str, float]]] = {"all": [], "largest": []}

    def run(dims, key):
        def f():
            secs[key].append(run_evaluators(arrays, EVALUATORS_FMNIST, dims, 10, module)[1])

        return f

    times = interleaved(
        {"all": run(dims_all, "all"), "largest": run([width], "largest")}, reps, warmup=0
    )
    t_all, t_one = median(times["all"]), median(times["largest"])
    n_img = sum(len(v) for k, v in arrays.items() if k.endswith("_x"))
    return [
        row(
            "eval/fmnist_end_to_end_all_vs_largest",
            (t_embed + t_all) / (t_embed + t_one),
            "<=",
            1.5,
            embed_seconds=t_embed,
            evaluators_all_seconds=t_all,
            evaluators_largest_seconds=t_one,
            evaluators_only_ratio=t_all / t_one,
            dims=dims_all,
            note=(
                f"eval.py's work: one embedding pass over {n_img} real Fashion-MNIST images "
                f"({t_embed:.0f} s, timed once: the same full-width pass for any dims) + "
                f"run_evaluators({'+'.join(EVALUATORS_FMNIST)}) at dims {dims_all} vs "
                f"[{width}] ({t_all:.1f} s vs {t_one:.1f} s, {reps} interleaved reps, "
                f"median, after a warm-up on 2000 rows); model: {src}"
            ),
        )
    ]
