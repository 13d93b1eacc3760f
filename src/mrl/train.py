"""The training task: compose -> instantiate -> fit -> test -> write ``metrics.json``.

Called by the thin root ``train.py`` (Hydra entry point). The run dir (Hydra's output dir)
receives ``.hydra/`` (resolved config), ``checkpoints/last.ckpt``, ``metrics.json`` (flat,
fractions in [0, 1]), ``run.json`` (method, dims, status, timing), CSV and W&B logs.
Test metrics are those of the *final* weights (as the paper reports the last epoch).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import hydra
import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf

from mrl.errors import MRLError
from mrl.module import MRLLitModule
from mrl.runs import prefix_table, update_metrics_json, write_json_atomic

log = logging.getLogger(__name__)


def output_dir(cfg: DictConfig) -> Path:
    """The run dir: ``paths.output_dir`` (Hydra's runtime output dir)."""
    return Path(cfg.paths.output_dir)


def resolve_ckpt_path(cfg: DictConfig, out: Path) -> str | None:
    """``ckpt_path``: null (fresh run), ``last`` (this run dir's last.ckpt) or a file path.

    A fresh run refuses a run dir that already holds a checkpoint, so nothing is overwritten.
    """
    last = out / "checkpoints" / "last.ckpt"
    spec = cfg.get("ckpt_path")
    if spec in (None, "", "null"):
        if last.exists():
            raise MRLError(
                f"run dir {out} already holds {last.name}; pass ckpt_path=last to resume it "
                "or choose another hydra.run.dir"
            )
        return None
    if spec == "last":
        if not last.exists():
            raise MRLError(f"ckpt_path=last but {last} does not exist; drop ckpt_path to start")
        return str(last)
    path = Path(str(spec)).expanduser()
    if not path.is_file():
        raise MRLError(f"ckpt_path={spec!r} is not a file; give a .ckpt path or 'last'")
    return str(path)


def build_datamodule(cfg: DictConfig) -> pl.LightningDataModule:
    try:
        return hydra.utils.instantiate(cfg.data)
    except hydra.errors.InstantiationException as e:
        raise _unwrap(e) from e


def build_module(cfg: DictConfig, dm: Any) -> MRLLitModule:
    mrl_cfg = cfg.mrl
    module = MRLLitModule(
        model=OmegaConf.to_container(cfg.model, resolve=True),
        num_classes=int(dm.num_classes),
        in_chans=int(dm.in_chans),
        img_size=int(dm.img_size),
        dims=OmegaConf.to_container(mrl_cfg.dims, resolve=True)
        if OmegaConf.is_list(mrl_cfg.dims)
        else mrl_cfg.dims,
        efficient=bool(mrl_cfg.efficient),
        ff_dim=mrl_cfg.get("ff_dim"),
        weights=OmegaConf.to_container(mrl_cfg.weights) if mrl_cfg.get("weights") else None,
        label_smoothing=float(mrl_cfg.label_smoothing),
        optim=OmegaConf.to_container(cfg.optim, resolve=True),
    )
    if hasattr(dm, "set_data_config"):
        data_cfg = module.net.backbone.data_config()
        data_cfg["input_size"] = (int(dm.in_chans), int(dm.img_size), int(dm.img_size))
        dm.set_data_config(data_cfg)
    return module


def _unwrap(e: Exception) -> Exception:
    """Hydra wraps constructor errors; surface the MRLError inside, if any."""
    cur: BaseException | None = e
    while cur is not None:
        if isinstance(cur, MRLError):
            return cur
        cur = cur.__cause__ or cur.__context__
    return e


def _instantiate_all(node: DictConfig | None, **extra) -> list:
    if not node:
        return []
    out = []
    for name, sub in node.items():
        if sub is None or "_target_" not in sub:
            continue
        try:
            out.append(hydra.utils.instantiate(sub, **extra.get(name, {})))
        except hydra.errors.InstantiationException as e:
            raise _unwrap(e) from e
    return out


def validate_trainer_cfg(cfg: DictConfig) -> None:
    t = cfg.trainer
    for key in ("max_epochs",):
        v = t.get(key)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
            raise MRLError(f"trainer.{key}={v!r} must be a positive integer")
    bs = cfg.data.get("batch_size")
    if bs is not None and (isinstance(bs, bool) or not isinstance(bs, int) or bs < 1):
        raise MRLError(f"data.batch_size={bs!r} must be a positive integer")


def train(cfg: DictConfig) -> dict[str, float]:
    """Train and test one model; return the final metrics (also in ``metrics.json``)."""
    out = output_dir(cfg)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    info: dict[str, Any] = {"status": "running", "task": "train", "run_dir": str(out)}
    write_json_atomic(out / "run.json", info)
    loggers: list = []
    try:
        validate_trainer_cfg(cfg)
        ckpt_path = resolve_ckpt_path(cfg, out)
        pl.seed_everything(int(cfg.seed), workers=True, verbose=False)
        dm = build_datamodule(cfg)
        module = build_module(cfg, dm)
        info.update(
            method=module.method,
            dims=module.dims,
            model=cfg.model.name,
            data=getattr(dm, "name", str(cfg.data.get("_target_"))),
            seed=int(cfg.seed),
            embed_dim=module.net.embed_dim,
            params=sum(p.numel() for p in module.parameters()),
        )
        write_json_atomic(out / "run.json", info)
        log.info("%s on %s: dims=%s", module.method, info["data"], module.dims)

        wandb_name = cfg.get("run_name") or f"{module.method}-{cfg.model.name}-s{cfg.seed}"
        loggers = _instantiate_all(cfg.get("logger"), wandb={"name": wandb_name})
        callbacks = _instantiate_all(cfg.get("callbacks"))
        if not loggers:  # a learning-rate monitor needs a logger
            callbacks = [c for c in callbacks if type(c).__name__ != "LearningRateMonitor"]
        trainer: pl.Trainer = hydra.utils.instantiate(
            cfg.trainer, logger=loggers or False, callbacks=callbacks, _convert_="partial"
        )
        for lg in loggers:
            lg.log_hyperparams(
                {
                    **OmegaConf.to_container(cfg, resolve=True),
                    "method": module.method,
                    "dims": module.dims,
                }
            )

        if cfg.get("train", True):
            trainer.fit(module, datamodule=dm, ckpt_path=ckpt_path)
        metrics = {
            k: v
            for k, v in trainer.callback_metrics.items()
            if k.startswith(("val/", "train/")) and not k.endswith("_step")
        }
        if cfg.get("test", True):
            trainer.test(module, datamodule=dm, verbose=False)
            metrics.update(
                {k: v for k, v in trainer.callback_metrics.items() if k.startswith("test/")}
            )
        final = update_metrics_json(
            out / "metrics.json", {k.removesuffix("_epoch"): v for k, v in metrics.items()}
        )
        stage = "test" if cfg.get("test", True) else "val"
        print(
            f"\n{module.method} ({cfg.model.name}, {info['data']}): {stage} accuracy (%) "
            f"per prefix\n" + prefix_table(final, module.dims, [f"{stage}/top1", f"{stage}/top5"])
        )
        print(f"run dir: {out}")
        info.update(status="completed", seconds=round(time.time() - t0, 1))
        return final
    except BaseException as e:
        info.update(
            status="failed",
            error=" ".join(str(e).split())[:500] or type(e).__name__,
            seconds=round(time.time() - t0, 1),
        )
        raise
    finally:
        write_json_atomic(out / "run.json", info)
        _close_wandb(loggers)


def _close_wandb(loggers: list) -> None:
    """Always close the W&B run, so each job of a sweep gets its own run."""
    if any(type(lg).__name__ == "WandbLogger" for lg in loggers):
        import wandb

        if wandb.run is not None:
            wandb.finish(exit_code=0)


torch.set_float32_matmul_precision("high")
