"""One evaluation: arrays (one embedding pass) -> every evaluator -> ``metrics.json`` + report.

Both doors lead here: a checkpoint (:func:`evaluate_run` embeds every split once, or reuses the
run dir's cache) and bare embeddings (``eval.py embeddings=...``) produce one
:class:`~mrl.eval.registry.EvalData`, and :func:`evaluate_arrays` does everything after it.
The training callback (:class:`~mrl.eval.callback.MRLEvalCallback`) calls :func:`evaluate_run`
too.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mrl.core.errors import MRLError
from mrl.core.validate import integer
from mrl.data.base import follow_model_transforms
from mrl.eval.cache import cached_embeddings
from mrl.eval.linear import head_logits
from mrl.eval.registry import (
    EvalData,
    Evaluator,
    check_sizes,
    main_metric_names,
    run_evaluators,
)
from mrl.eval.report import report
from mrl.run import distributed
from mrl.run.files import update_metrics_json, write_json_atomic
from mrl.run.layout import RunDir


def eval_dims(
    trained: Sequence[int],
    extra: Sequence[int] | None,
    width: int,
    only: Sequence[int] | None = None,
) -> list[int]:
    """The prefixes to evaluate, sorted; each must lie in ``1..width``.

    ``only`` (``eval.py dims=[...]``) replaces the default, which is the trained dims plus
    the ``extra`` (untrained) prefixes; e.g. ``dims=[512]`` evaluates the largest alone.
    """

    def checked(ds: Sequence[int] | None, name: str) -> list[int]:
        ds = list(ds or [])
        bad = []
        for d in ds:
            try:
                integer(d, name, min=1, max=width)
            except MRLError:
                bad.append(d)
        if bad:
            raise MRLError(f"{name}={ds}: {bad} not integers in 1..{width} (the embedding width)")
        return [int(d) for d in ds]

    if only is not None:
        if not list(only):
            raise MRLError(f"dims=[]: give at least one prefix size in 1..{width}, or dims=null")
        return sorted(set(checked(only, "dims")))
    return sorted(set(trained) | set(checked(extra, "eval.extra_dims")))


def match_data(module: Any, dm: Any) -> None:
    """Check that ``dm`` fits the model (classes, channels) and give it the model's transform.

    The transform is the backbone's timm data config at the data's own image size.
    """
    hp = module.hparams
    if int(dm.num_classes) != hp.num_classes or int(dm.in_chans) != hp.in_chans:
        raise MRLError(
            f"checkpoint expects {hp.num_classes} classes / {hp.in_chans} channels but the data "
            f"{getattr(dm, 'name', '')!r} has {dm.num_classes} / {dm.in_chans}; evaluate on the "
            "data it was trained on"
        )
    follow_model_transforms(dm, module)  # timm's transform for the backbone


def _eval_transform(dm: Any) -> Any:
    """The preprocessing the embeddings really went through (the data module's eval
    transform, :func:`mrl.inference.preprocessing_of`), recorded in the cache's meta.json;
    the data config for data modules it does not describe."""
    from mrl.inference import preprocessing_of

    try:
        return preprocessing_of(dm)
    except MRLError:
        return str(getattr(dm, "data_config", ""))


def evaluate_arrays(
    data: EvalData,
    evaluators: Mapping[str, Evaluator],
    dims: Sequence[int],
    out_dir: Path,
    *,
    title: str = "",
    plots: bool = True,
    loggers: Sequence[Any] = (),
    timing: Mapping[str, Any] | None = None,
) -> dict[str, float]:
    """Run the evaluators on ``data`` at ``dims``; merge into ``metrics.json``; report.

    Returns every metric now in ``metrics.json`` (earlier keys of the run dir included).
    """
    run = RunDir(out_dir)
    metrics, secs = run_evaluators(evaluators, data, dims)
    final = update_metrics_json(run.metrics, metrics)
    write_json_atomic(
        run.eval_timing, {**(timing or {}), **{k: round(v, 2) for k, v in secs.items()}}
    )
    names = main_metric_names(evaluators, metrics)
    report(final, metrics, names, dims, run.path, title, plots, loggers)
    print(f"timing (s): {dict(timing or {})} + {[f'{k} {v:.1f}' for k, v in secs.items()]}")
    print(f"run dir: {run.path}")
    return final


def embed_width(module: Any) -> int:
    """The full embedding width of a LightningModule of this project (a slimmable network's
    widest representation, whose size is its largest dim)."""
    return int(getattr(module.net, "embed_dim", None) or module.dims[-1])


def evaluate_run(
    module: Any,
    dm: Any,
    evaluators: Mapping[str, Evaluator],
    out_dir: Path,
    *,
    meta: Mapping[str, Any] | None = None,
    extra_dims: Sequence[int] | None = None,
    dims: Sequence[int] | None = None,
    device: str | torch.device = "cpu",
    use_cache: bool = True,
    plots: bool = True,
    loggers: Sequence[Any] = (),
    title: str = "",
) -> dict[str, float]:
    """Embed every split once (or reuse the cache), then :func:`evaluate_arrays`.

    The per-prefix evaluators run at ``dims`` when given, else at the model's trained dims
    plus ``extra_dims`` (:func:`eval_dims`). Under DDP every rank calls this: each embeds its
    shard, rank 0 runs the evaluators on the gathered arrays and writes; the others return
    ``{}``.
    """
    match_data(module, dm)
    check_sizes(evaluators, dm.split_sizes(), int(dm.num_classes), embed_width(module))
    meta = {**(meta or {}), "data": repr(dm), "transform": _eval_transform(dm)}
    t0 = time.time()
    arrays, reused = cached_embeddings(
        module, dm, RunDir(out_dir).embeddings, meta, device, use_cache
    )
    timing = {"embed": round(time.time() - t0, 2), "embeddings_reused": reused}
    if not distributed.is_main():
        return {}
    if distributed.world_size() > 1:
        timing["processes"] = distributed.world_size()
    data = EvalData.from_arrays(
        arrays, int(dm.num_classes), heads=lambda z: head_logits(module, np.asarray(z))
    )
    dims = eval_dims(module.dims, extra_dims, data.width, dims)
    for ev in evaluators.values():
        if ev.needs_model:  # e.g. shifted test sets: embedded once, cached beside the splits
            ev.prepare(module, dm, device, RunDir(out_dir).embeddings)
    return evaluate_arrays(
        data, evaluators, dims, out_dir, title=title, plots=plots, loggers=loggers, timing=timing
    )
