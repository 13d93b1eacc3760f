"""Reproduce the paper's Table 1 and Table 2 end to end: train, evaluate, baselines, tables.

    python scripts/reproduce.py [--experiment table1_fashion_mnist] [--data fashion_mnist]
                                [--seeds 0,1,2] [--out results] [--jobs N]
                                [-- Hydra overrides for every job]

Stages, each run for every seed (each resumable: a finished run is reused, an unfinished one
continues from its ``last.ckpt``; a failed job is reported and its cells are marked failed):
  1. MRL and MRL-E: ``train.py -m experiment=E mrl.efficient=false,true seed=...``
  2. FF-k for every k of the nesting list: ``train.py -m experiment=E method=ff mrl.ff_dim=...``
     (FF-max, the largest k, in its own sweep ``seed<s>_max``: only it is evaluated at every
     prefix, for Rand. FS)
  3. Slim. Net: ``train.py -m experiment=E objective=slimmable`` (the slimmable version of the
     experiment's ResNet; the same trainer, checkpoints and resume)
  4. baselines from each seed's FF-max: SVD and Rand. LP (Table 1), FF+SVD (Table 2); Rand. LP
     trains for the networks' epochs at their batch size
  5. tables ``<out>/table{1,2}_<data>.{md,csv,png}``: mean ± std over the seeds, the raw
     per-seed values in the CSV, and the paper's claims judged against that spread
Run dirs live in ``<out>/runs/<experiment>/<stage>/seed<s>/<job>/``, one multirun per stage
and seed; ``--jobs`` of them run at once (default: 1 with a GPU; on a CPU-only machine 2, each
with half the cores and its output in ``seed<s>.log``). The exit status is 1 when any stage
failed (the tables are still written, the failed cells marked).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def compose(experiment: str, out_dir: Path, overrides: list[str]):
    """The experiment's training config, as train.py would compose it."""
    from hydra import compose as hcompose
    from hydra import initialize_config_dir

    from mrl.cli import register_resolvers

    register_resolvers()
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        return hcompose(
            "train",
            overrides=[
                f"experiment={experiment}",
                f"paths.output_dir={out_dir}",
                f"paths.root_dir={ROOT}",
                *overrides,
            ],
        )


def train_sweep(
    name: str,
    sweep_dir: Path,
    experiment: str,
    args: list[str],
    log: Path | None = None,
    threads: int | None = None,
) -> int:
    """One Hydra multirun of train.py; returns its exit code (failures do not stop us).
    ``log``: its output goes to that file (appended) instead of the console; ``threads``: its
    OMP/MKL thread count (unless the caller's environment already sets one)."""
    cmd = [
        sys.executable,
        str(ROOT / "train.py"),
        "-m",
        f"experiment={experiment}",
        f"hydra.sweep.dir={sweep_dir}",
        "ckpt_path=auto",
        *args,
    ]
    env = dict(os.environ)
    if threads:
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            env.setdefault(var, str(threads))
    where = f" (log: {log})" if log else ""
    print(f"\n== {name}: {' '.join(cmd[1:])}{where}", flush=True)
    t = time.time()
    if log is None:
        rc = subprocess.call(cmd, cwd=ROOT, env=env)
    else:
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("a") as f:
            rc = subprocess.call(cmd, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT)
    print(f"== {name}: exit {rc} in {time.time() - t:.0f}s", flush=True)
    return rc


def default_jobs() -> int:
    """Training processes at once: 1 with a GPU; on a CPU-only machine 2 (each with half the
    cores), which overlaps one job's single-threaded parts (start-up, evaluation, checkpoint
    and plot writing) with the other's training."""
    import torch

    return 1 if torch.cuda.is_available() else min(2, os.cpu_count() or 1)


Task = tuple[str, Path, list[str], "Callable[[], str | None] | None"]


def run_sweeps(tasks: list[Task], experiment: str, jobs: int) -> list[str]:
    """Run every ``(name, sweep_dir, args, then)`` multirun, ``jobs`` at a time (in the given
    order); ``then`` (if any) runs in the same slot right after its sweep, whatever its exit,
    and returns the name of what failed or None. Returns the names of everything that failed.
    With ``jobs > 1`` each sweep writes its output to ``<sweep_dir>.log`` and uses
    ``cores // jobs`` threads."""
    threads = max(1, (os.cpu_count() or 1) // jobs) if jobs > 1 else None

    def run(task: Task) -> list[str]:
        name, sweep_dir, args, then = task
        log = sweep_dir.with_suffix(".log") if jobs > 1 else None
        failed = [name] if train_sweep(name, sweep_dir, experiment, args, log, threads) else []
        also = then() if then is not None else None
        return failed + ([also] if also else [])

    if jobs <= 1:
        return [f for t in tasks for f in run(t)]
    from concurrent.futures import ThreadPoolExecutor

    import torch

    torch.set_num_threads(threads)  # the follow-up work done in this process (baselines)
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        return [f for failed in pool.map(run, tasks) for f in failed]


def ff_max_run(ff_dir: Path, seed: int) -> Path | None:
    """The completed FF run with the largest k for ``seed``."""
    best = None
    for info_file in sorted(ff_dir.rglob("run.json")):
        info = json.loads(info_file.read_text())
        if info.get("seed", 0) != seed:
            continue
        if info.get("status") == "completed" and str(info.get("method", "")).startswith("FF-"):
            k = int(info["method"].split("-")[1])
            if best is None or k > best[0]:
                best = (k, info_file.parent)
    return best[1] if best else None


def baselines(run_dir: Path, ff_dir: Path, dims: list[int], seed: int, budget: dict) -> bool:
    """SVD and Rand. LP (Table 1), FF+SVD (Table 2) from ``seed``'s FF-max classifier and
    embeddings; Rand. LP's probe trains for ``budget["epochs"]`` at ``budget["batch_size"]``
    (the networks' budget).

    Returns False (and records ``status: failed`` in ``run.json``) when they cannot be computed.
    """
    from mrl.baselines import ff_svd_1nn, rand_lp, svd_top1
    from mrl.eval.cache import load_embeddings
    from mrl.run.files import update_metrics_json
    from mrl.run.layout import RunDir
    from mrl.run.record import read_record, run_record
    from mrl.tasks.evaluate import load_module

    run = RunDir(run_dir)
    if read_record(run.record).get("status") == "completed":
        print(f"== baselines: reusing {run_dir}")
        return True
    run_dir.mkdir(parents=True, exist_ok=True)
    try:
        with run_record(
            run.record, task="baselines", method="baselines", dims=dims, seed=seed
        ) as info:
            src = ff_max_run(ff_dir, seed)
            if src is None:
                raise RuntimeError(f"no completed FF run under {ff_dir}: baselines need FF-max")
            module = load_module(RunDir(src).last_ckpt)
            arr = load_embeddings(RunDir(src).embeddings)
            head = module.net.head.heads[0]
            w = head.weight.detach().numpy()
            b = head.bias.detach().numpy()
            # FF-max's representation is what its classifier reads: the first ff_dim features
            d = w.shape[1]
            tx, ty = arr["train_x"][:, :d], arr["train_y"]
            qx, qy = arr["test_x"][:, :d], arr["test_y"]
            n_cls = int(module.hparams.num_classes)
            t = time.time()
            m: dict[str, float] = {}
            for k, v in svd_top1(w, b, qx, qy, dims).items():
                if v is not None:
                    m[f"svd/top1@d{k}"] = v
            for k, v in rand_lp(tx, ty, qx, qy, dims, n_cls, seed=seed, **budget).items():
                if v is not None:
                    m[f"rand_lp/top1@d{k}"] = v
            for k, v in ff_svd_1nn(tx, ty, qx, qy, dims).items():
                if v is not None:
                    m[f"ff_svd/knn_top1@d{k}"] = v
            update_metrics_json(run.metrics, m)
            info.update(source=str(src), svd_rank_limit=int(min(w.shape)), rand_lp=budget)
            print(
                f"== baselines from {src.relative_to(ff_dir)}: {len(m)} cells in {time.time() - t:.0f}s"
            )
    except Exception as e:  # noqa: BLE001 - reported and counted; the tables are still written
        print(f"== baselines failed: {e}", flush=True)
        return False
    return True


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--experiment", default="table1_fashion_mnist")
    p.add_argument("--data", default="fashion_mnist", help="name used in the result files")
    p.add_argument("--out", default="results")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated training seeds")
    p.add_argument("--skip", nargs="*", default=[], choices=["mrl", "ff", "slim", "baselines"])
    p.add_argument(
        "--jobs",
        type=int,
        default=None,
        help="training processes at once (default: 1 with a GPU, else 2 with half the cores each)",
    )
    p.add_argument("overrides", nargs="*", help="Hydra overrides for every training job")
    a = p.parse_args(argv)

    from mrl.core.dims import parse_dims
    from mrl.results import write_tables

    try:
        seeds = [int(x) for x in a.seeds.split(",")]
        if not seeds or any(x < 0 for x in seeds) or len(set(seeds)) != len(seeds):
            raise ValueError
    except ValueError:
        print(
            f"error: --seeds={a.seeds!r}: give distinct integers >= 0, e.g. 0,1,2", file=sys.stderr
        )
        return 2
    if a.jobs is not None and a.jobs < 1:
        print(f"error: --jobs={a.jobs}: give a number of processes >= 1", file=sys.stderr)
        return 2
    t0 = time.time()
    out = (ROOT / a.out) if not Path(a.out).is_absolute() else Path(a.out)
    runs = out / "runs" / a.experiment
    try:
        cfg = compose(a.experiment, runs / "probe", a.overrides)
    except Exception as e:  # noqa: BLE001 - a bad experiment name or override: one line
        from mrl.cli import user_message

        message = user_message(e)
        if message is None:
            raise
        print(f"error: {message}", file=sys.stderr)
        return 2
    dims = parse_dims(list(cfg.mrl.dims) if not isinstance(cfg.mrl.dims, str) else cfg.mrl.dims)
    print(f"Reproducing Table 1/2 ({a.experiment}): dims {dims}, seeds {seeds}; runs in {runs}")
    jobs = a.jobs if a.jobs is not None else default_jobs()
    # the longest sweeps first (FF: one network per size), so that parallel jobs end together.
    # Only FF-max is evaluated at every prefix (Rand. FS); FF-k below it only at k.
    no_extra = ["callbacks.mrl_eval.extra_dims=[]"] if "mrl_eval" in (cfg.callbacks or {}) else []
    stages = [
        ("ff", "FF-k", "ff", "", ["method=ff", "mrl.ff_dim=" + ",".join(map(str, dims[:-1]))]),
        ("slim", "Slim. Net", "slim", "", ["objective=slimmable"]),
        ("mrl", "MRL, MRL-E", "mrl", "", ["mrl.efficient=false,true"]),
        ("ff", "FF-max", "ff", "_max", ["method=ff", f"mrl.ff_dim={dims[-1]}"]),
    ]
    budget = {"epochs": int(cfg.trainer.max_epochs), "batch_size": int(cfg.data.batch_size)}

    def seed_baselines(seed: int) -> str | None:
        ok = baselines(runs / "baselines" / f"seed{seed}", runs / "ff", dims, seed, budget)
        return None if ok else f"baselines (seed {seed})"

    def then_baselines(name: str, seed: int) -> Callable[[], str | None] | None:
        """Seed's SVD / Rand. LP / FF+SVD right after its FF-max, in the same slot (they
        overlap with the other slot's training instead of running after all of it)."""
        if name != "FF-max" or "baselines" in a.skip:
            return None
        return lambda: seed_baselines(seed)

    tasks = [
        (
            f"{name} (seed {seed})",
            runs / folder / f"seed{seed}{suffix}",
            [*args, *(no_extra if name == "FF-k" else []), f"seed={seed}", *a.overrides],
            then_baselines(name, seed),
        )
        for key, name, folder, suffix, args in stages
        if key not in a.skip and not (name == "FF-k" and len(dims) == 1)
        for seed in seeds
    ]
    print(f"{len(tasks)} training sweeps, {jobs} at a time")
    failures = run_sweeps(tasks, a.experiment, jobs)
    if "baselines" not in a.skip and "ff" in a.skip:  # FF-max trained earlier: baselines only
        failures += [f for f in map(seed_baselines, seeds) if f]
    header = (
        f"Experiment `{a.experiment}` (conf/experiment/{a.experiment}.yaml): model "
        f"{cfg.model.name} layers={list(cfg.model.get('layers') or [])} "
        f"channels={list(cfg.model.get('channels') or [])}, dims {dims}, "
        f"{cfg.trainer.max_epochs} epochs, batch {cfg.data.batch_size}, data {a.data} "
        f"subset={cfg.data.get('subset')}, seeds {seeds}. Wall-clock {time.time() - t0:.0f} s."
    )
    files = write_tables([runs], out, a.data, dims, header=header, failed_stages=failures)
    for name, path in files.items():
        if name.endswith(".md"):
            print("\n" + path.read_text())
    print(
        f"written: {', '.join(str(p.relative_to(ROOT)) if p.is_relative_to(ROOT) else str(p) for p in files.values())}"
    )
    print(f"total wall-clock: {time.time() - t0:.0f} s")
    if failures:
        print(f"failed stages (their cells are missing): {', '.join(failures)}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
