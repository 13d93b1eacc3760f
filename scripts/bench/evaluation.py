"""Evaluation benchmarks: every prefix against only the largest.

``eval``: the evaluators alone. Both sides call :func:`mrl.eval.registry.run_evaluators` with
kNN + retrieval + linear probe on the same in-memory synthetic embeddings; only ``dims``
differs (``[8, 16, ..., width]`` vs ``[width]``). ``eval_fmnist``: ``eval.py``'s work on
real Fashion-MNIST, one embedding pass plus the per-prefix evaluators. The evaluators' own
per-stage seconds (search, knn, retrieval, probe, ...) are kept in the rows, which is the
profile of where the extra time goes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .common import Synthetic, interleaved, median, row, set_threads

EVALUATORS = ["knn", "retrieval", "probe"]


WARM_ROWS = 2000  # rows of each split in the warm-up slice (>= the largest retrieval k)


def conf_evaluators(names: list[str]) -> dict:
    """The evaluators ``eval.py eval=[names]`` builds (settings from ``conf/eval/``)."""
    from hydra import compose, initialize_config_dir

    from mrl.cli import register_resolvers
    from mrl.eval.registry import build_evaluators

    register_resolvers()
    conf = Path(__file__).resolve().parents[2] / "conf"
    with initialize_config_dir(str(conf), version_base="1.3"):
        cfg = compose("eval", overrides=[f"eval=[{','.join(names)}]", "ckpt_path=none"])
    return build_evaluators(cfg.eval)


def all_vs_largest(
    arrays: dict,
    evaluators: dict,
    dims_all: list[int],
    reps: int,
    module: Any = None,
    num_classes: int = 10,
) -> tuple[list[float], list[float], dict[str, dict[str, float]]]:
    """Seconds per round of ``run_evaluators`` at ``dims_all`` and at ``[max(dims_all)]``.

    ``evaluators`` are names of ``conf/eval/<name>.yaml`` (their settings as eval.py's).

    Every code path is warmed up once on a ``WARM_ROWS`` slice first, so that neither side
    pays first-call costs (the first linear_probe call in a process measured ~2x a later
    one); then interleaved reps. Also returns each side's median per-stage seconds.
    """
    from mrl.eval.linear import head_logits
    from mrl.eval.registry import EvalData, run_evaluators

    evs = conf_evaluators(list(evaluators))
    heads = None if module is None else (lambda z: head_logits(module, z))

    def data(arr):
        return EvalData.from_arrays(arr, num_classes, heads=heads)

    small = {k: v[:WARM_ROWS] for k, v in arrays.items()}
    run_evaluators(evs, data(small), dims_all)
    secs: dict[str, list[dict[str, float]]] = {"all": [], "largest": []}

    def run(dims, key):
        def f():
            secs[key].append(run_evaluators(evs, data(arrays), dims)[1])

        return f

    times = interleaved(
        {"all": run(dims_all, "all"), "largest": run([dims_all[-1]], "largest")}, reps, 0
    )
    stages = {
        key: {k: round(median([s[k] for s in secs[key]]), 3) for k in secs[key][0]} for key in secs
    }
    return times["all"], times["largest"], stages


def eval_prefixes(n: int, n_queries: int, width: int, reps: int) -> list[dict[str, Any]]:
    from mrl.core.dims import auto_dims

    set_threads(2)
    synth = Synthetic(width, 10, seed=1)
    arrays = synth.dataset(n, n_queries)
    dims_all = auto_dims(width)
    times_all, times_one, stages = all_vs_largest(arrays, EVALUATORS, dims_all, reps)
    t_all, t_one = median(times_all), median(times_one)
    return [
        row(
            "eval/all_prefixes_vs_largest",
            t_all / t_one,
            "<=",
            1.5,
            interval_of=(times_all, times_one),
            seconds=t_all,
            seconds_largest=t_one,
            stages_all=stages["all"],
            stages_largest=stages["largest"],
            dims=dims_all,
            note=(
                f"evaluators only (no embedding pass): run_evaluators(knn + retrieval + probe) "
                f"on {n} x {width} database / "
                f"{n_queries} queries, dims {dims_all[0]}..{width} ({len(dims_all)}) vs [{width}]; "
                f"{synth.describe()} (10 classes); one warm-up call on {WARM_ROWS} rows "
                f"first; {reps} interleaved reps, median"
            ),
        )
    ]


#: the per-prefix evaluators of ``eval.py`` (the adaptive ones are not per prefix)
EVALUATORS_FMNIST = ["linear", "probe", "knn", "retrieval", "fewshot"]


def eval_fmnist(
    n_db: int | None, n_q: int | None, val_size: int, reps: int, ckpt: str | None = None
) -> list[dict[str, Any]]:
    """``eval.py``'s work on real Fashion-MNIST: one embedding pass, then the evaluators.

    The embedding pass is timed once (it is the same full-width pass whichever prefixes
    are evaluated); the evaluators at every trained prefix and at the largest alone are
    timed in interleaved reps. Value: ``(embed + all) / (embed + largest)``.
    """
    import time

    from mrl.data import FashionMNISTDataModule
    from mrl.eval.cache import compute_embeddings
    from mrl.eval.pipeline import match_data

    from .retrieval import fmnist_module

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
    times_all, times_one, stages = all_vs_largest(arrays, EVALUATORS_FMNIST, dims_all, reps, module)
    t_all, t_one = median(times_all), median(times_one)
    n_img = sum(len(v) for k, v in arrays.items() if k.endswith("_x"))
    return [
        row(
            "eval/fmnist_end_to_end_all_vs_largest",
            (t_embed + t_all) / (t_embed + t_one),
            "<=",
            1.5,
            interval_of=([t_embed + t for t in times_all], [t_embed + t for t in times_one]),
            embed_seconds=t_embed,
            evaluators_all_seconds=t_all,
            evaluators_largest_seconds=t_one,
            evaluators_only_ratio=t_all / t_one,
            stages_all=stages["all"],
            stages_largest=stages["largest"],
            dims=dims_all,
            note=(
                f"eval.py's work: one embedding pass over {n_img} real Fashion-MNIST images "
                f"({t_embed:.0f} s, timed once: the same full-width pass for any dims) + "
                f"run_evaluators({'+'.join(EVALUATORS_FMNIST)}) at dims {dims_all} vs "
                f"[{width}] ({t_all:.1f} s vs {t_one:.1f} s, {reps} interleaved reps, "
                f"median, after a warm-up on {WARM_ROWS} rows); model: {src}"
            ),
        )
    ]
