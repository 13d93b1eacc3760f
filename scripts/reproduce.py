"""Reproduce the paper's Table 1 and Table 2 end to end: train, evaluate, baselines, tables.

    python scripts/reproduce.py [--experiment table1_fashion_mnist] [--data fashion_mnist]
                                [--out results] [-- extra Hydra overrides for every job]

Stages (each resumable: a finished run is reused, an unfinished one continues from its
``last.ckpt``; a failed job is reported and its cells are left missing):
  1. MRL and MRL-E: ``train.py -m experiment=E mrl.efficient=false,true`` (one Hydra multirun)
  2. FF-k for every k of the nesting list: ``train.py -m experiment=E method=ff mrl.ff_dim=...``
  3. Slim. Net: a width-slimmable ResNet (switchable BN, sandwich rule) on the same data
  4. baselines from FF-max: SVD and Rand. LP (Table 1), FF+SVD and Rand. FS (Table 2)
  5. aggregation into ``<out>/table{1,2}_<data>.{md,csv,png}`` (scripts/aggregate.py)
Run dirs live in ``<out>/runs/<experiment>/``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
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


def train_sweep(name: str, sweep_dir: Path, experiment: str, args: list[str]) -> int:
    """One Hydra multirun of train.py; returns its exit code (failures do not stop us)."""
    cmd = [
        sys.executable,
        str(ROOT / "train.py"),
        "-m",
        f"experiment={experiment}",
        f"hydra.sweep.dir={sweep_dir}",
        "ckpt_path=auto",
        *args,
    ]
    print(f"\n== {name}: {' '.join(cmd[1:])}", flush=True)
    t = time.time()
    rc = subprocess.call(cmd, cwd=ROOT)
    print(f"== {name}: exit {rc} in {time.time() - t:.0f}s", flush=True)
    return rc


def _done(run_dir: Path) -> bool:
    info = run_dir / "run.json"
    return info.is_file() and json.loads(info.read_text()).get("status") == "completed"


def train_slimmable(run_dir: Path, experiment: str, overrides: list[str]) -> None:
    """Slim. Net on the experiment's data and schedule, evaluated at the sizes its widths give."""
    import hydra
    import pytorch_lightning as pl
    from omegaconf import OmegaConf

    from mrl.baselines.slimmable import SlimmableLitModule
    from mrl.run.files import update_metrics_json, write_json_atomic

    if _done(run_dir):
        print(f"== Slim. Net: reusing {run_dir}")
        return
    cfg = compose(experiment, run_dir, overrides)
    info = {"status": "running", "task": "train", "method": "Slim. Net"}
    write_json_atomic(run_dir / "run.json", info)
    t = time.time()
    try:
        pl.seed_everything(int(cfg.seed), workers=True, verbose=False)
        dm = hydra.utils.instantiate(cfg.data)
        channels = list(cfg.model.get("channels") or [64, 128, 256, 512])
        module = SlimmableLitModule(
            num_classes=dm.num_classes,
            in_chans=dm.in_chans,
            img_size=dm.img_size,
            base_width=int(channels[0]),
            small_input_stem=cfg.model.get("small_input_stem", "auto"),
            label_smoothing=float(cfg.mrl.label_smoothing),
            optim=OmegaConf.to_container(cfg.optim, resolve=True),
        )
        ckpt_dir = run_dir / "checkpoints"
        last = ckpt_dir / "last.ckpt"
        trainer = hydra.utils.instantiate(
            cfg.trainer,
            logger=pl.loggers.CSVLogger(run_dir, name="csv", version=""),
            callbacks=[
                pl.callbacks.ModelCheckpoint(dirpath=ckpt_dir, save_last=True, save_top_k=0)
            ],
            enable_progress_bar=False,
        )
        trainer.fit(module, datamodule=dm, ckpt_path=str(last) if last.is_file() else None)
        trainer.test(module, datamodule=dm, verbose=False)
        metrics = {
            k.replace("test/top1@", "slim/top1@"): v
            for k, v in trainer.callback_metrics.items()
            if k.startswith("test/top1@")
        }
        update_metrics_json(run_dir / "metrics.json", metrics)
        info.update(status="completed", dims=module.dims, seconds=round(time.time() - t, 1))
    except Exception as e:  # noqa: BLE001 - report, keep going with the other stages
        info.update(status="failed", error=str(e)[:300])
        print(f"== Slim. Net failed: {e}", flush=True)
    finally:
        write_json_atomic(run_dir / "run.json", info)


def ff_max_run(ff_dir: Path) -> Path | None:
    best = None
    for info_file in ff_dir.glob("*/run.json"):
        info = json.loads(info_file.read_text())
        if info.get("status") == "completed" and str(info.get("method", "")).startswith("FF-"):
            k = int(info["method"].split("-")[1])
            if best is None or k > best[0]:
                best = (k, info_file.parent)
    return best[1] if best else None


def baselines(run_dir: Path, ff_dir: Path, dims: list[int]) -> None:
    """SVD and Rand. LP (Table 1), FF+SVD (Table 2) from FF-max's classifier and embeddings."""
    import numpy as np

    from mrl.baselines import ff_svd_1nn, rand_lp, svd_top1
    from mrl.eval.cache import load_embeddings
    from mrl.run.files import update_metrics_json, write_json_atomic
    from mrl.run.layout import RunDir
    from mrl.tasks.evaluate import load_module

    if _done(run_dir):
        print(f"== baselines: reusing {run_dir}")
        return
    info = {"status": "running", "task": "baselines", "method": "baselines"}
    write_json_atomic(run_dir / "run.json", info)
    try:
        src = ff_max_run(ff_dir)
        if src is None:
            raise RuntimeError(f"no completed FF run under {ff_dir}: baselines need FF-max")
        ckpt = next(iter(sorted((src / "checkpoints").glob("last.ckpt"))), None)
        if ckpt is None:
            raise RuntimeError(f"{src} has no checkpoints/last.ckpt")
        module = load_module(ckpt)
        arr = load_embeddings(RunDir(src).embeddings)
        head = module.net.head.heads[0]
        w = head.weight.detach().numpy()
        b = head.bias.detach().numpy()
        # FF-max's representation is what its classifier reads: the first ff_dim features
        d = w.shape[1]
        tx, ty, qx, qy = arr["train_x"][:, :d], arr["train_y"], arr["test_x"][:, :d], arr["test_y"]
        n_cls = int(module.hparams.num_classes)
        t = time.time()
        m: dict[str, float] = {}
        for k, v in svd_top1(w, b, qx, qy, dims).items():
            if v is not None:
                m[f"svd/top1@d{k}"] = v
        for k, v in rand_lp(tx, ty, qx, qy, dims, n_cls, seed=0).items():
            if v is not None:
                m[f"rand_lp/top1@d{k}"] = v
        for k, v in ff_svd_1nn(tx, ty, qx, qy, dims).items():
            if v is not None:
                m[f"ff_svd/knn_top1@d{k}"] = v
        update_metrics_json(run_dir / "metrics.json", m)
        info.update(
            status="completed",
            source=str(src),
            seconds=round(time.time() - t, 1),
            svd_rank_limit=int(min(w.shape)),
            dims=dims,
        )
        print(f"== baselines from {src.name}: {len(m)} cells in {time.time() - t:.0f}s")
        del np
    except Exception as e:  # noqa: BLE001
        info.update(status="failed", error=str(e)[:300])
        print(f"== baselines failed: {e}", flush=True)
    finally:
        write_json_atomic(run_dir / "run.json", info)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--experiment", default="table1_fashion_mnist")
    p.add_argument("--data", default="fashion_mnist", help="name used in the result files")
    p.add_argument("--out", default="results")
    p.add_argument("--skip", nargs="*", default=[], choices=["mrl", "ff", "slim", "baselines"])
    p.add_argument("overrides", nargs="*", help="Hydra overrides for every training job")
    a = p.parse_args(argv)

    from mrl.core.dims import parse_dims
    from mrl.results import write_tables

    t0 = time.time()
    out = (ROOT / a.out) if not Path(a.out).is_absolute() else Path(a.out)
    runs = out / "runs" / a.experiment
    cfg = compose(a.experiment, runs / "probe", a.overrides)
    dims = parse_dims(list(cfg.mrl.dims) if not isinstance(cfg.mrl.dims, str) else cfg.mrl.dims)
    print(f"Reproducing Table 1/2 ({a.experiment}): dims {dims}; runs in {runs}")
    failures = []
    if "mrl" not in a.skip:
        rc = train_sweep(
            "MRL, MRL-E", runs / "mrl", a.experiment, ["mrl.efficient=false,true", *a.overrides]
        )
        failures += ["MRL/MRL-E"] * (rc != 0)
    if "ff" not in a.skip:
        rc = train_sweep(
            "FF-k",
            runs / "ff",
            a.experiment,
            ["method=ff", "mrl.ff_dim=" + ",".join(map(str, dims)), *a.overrides],
        )
        failures += ["FF"] * (rc != 0)
    if "slim" not in a.skip:
        train_slimmable(runs / "slim", a.experiment, a.overrides)
    if "baselines" not in a.skip:
        baselines(runs / "baselines", runs / "ff", dims)
    header = (
        f"Experiment `{a.experiment}` (conf/experiment/{a.experiment}.yaml): model "
        f"{cfg.model.name} channels={list(cfg.model.get('channels') or [])}, dims {dims}, "
        f"{cfg.trainer.max_epochs} epochs, data {a.data} subset={cfg.data.get('subset')}, "
        f"seed {cfg.seed}. Wall-clock {time.time() - t0:.0f} s."
    )
    files = write_tables([runs], out, a.data, dims, header=header)
    for name, path in files.items():
        if name.endswith(".md"):
            print("\n" + path.read_text())
    print(
        f"written: {', '.join(str(p.relative_to(ROOT)) if p.is_relative_to(ROOT) else str(p) for p in files.values())}"
    )
    print(f"total wall-clock: {time.time() - t0:.0f} s")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
