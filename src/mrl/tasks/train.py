"""The training task: compose -> instantiate -> fit -> test -> write ``metrics.json``.

Called by the thin root ``train.py`` (Hydra entry point). The run dir (Hydra's output dir)
receives ``.hydra/`` (resolved config), ``checkpoints/last.ckpt``, ``metrics.json`` (flat,
fractions in [0, 1]), ``run.json`` (method, dims, status, timing), CSV and W&B logs.
Test metrics are those of the *final* weights (as the paper reports the last epoch).

Reliability (see :mod:`mrl.run.resume`, :mod:`mrl.run.checkpoints`, :mod:`mrl.cli`):

* a killed run continues with the same command plus ``ckpt_path=last`` (``last.ckpt`` is
  refreshed every ``callbacks.last_checkpoint.every_n_train_steps`` steps and at epoch ends,
  written atomically; the W&B run id is kept in ``wandb_id.txt``, so W&B resumes the same run);
* a resume checkpoint is read with ``weights_only=True`` and checked against the config before
  Lightning opens it;
* the same command and seed on CPU give the same ``metrics.json``;
* a NaN / infinite loss stops the run naming the step and prefix; ``last.ckpt`` keeps the last
  good state; ``run.json`` records ``status: failed`` and the error of any failed run.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import hydra
import pytorch_lightning as pl
import torch
import torch.multiprocessing as mp
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.plugins.environments import SLURMEnvironment

from mrl.core.errors import MRLError, NonFiniteLossError
from mrl.core.validate import integer
from mrl.data.base import follow_model_transforms
from mrl.eval.report import prefix_table
from mrl.objectives.classification import MRLLitModule
from mrl.run.checkpoints import AtomicCheckpointIO, fit_progress, remove_stale_temp_files
from mrl.run.distributed import worker_error
from mrl.run.files import update_metrics_json
from mrl.run.layout import RunDir
from mrl.run.preemption import PreemptionCheckpoint, in_submitit_job
from mrl.run.record import read_record, run_record
from mrl.run.resume import (
    adopt_csv_header,
    check_resume_checkpoint,
    merge_csv_logs,
    stash_csv_logs,
    wandb_run_id,
)
from mrl.tasks.instantiate import close_wandb, instantiate, instantiate_all, unwrap

log = logging.getLogger(__name__)


def output_dir(cfg: DictConfig) -> Path:
    """The run dir: ``paths.output_dir`` (Hydra's runtime output dir)."""
    return Path(cfg.paths.output_dir)


def resolve_ckpt_path(cfg: DictConfig, out: Path) -> str | None:
    """``ckpt_path``: null (fresh run), ``last`` (this run dir's last.ckpt), ``auto`` (``last``
    when it exists, else fresh; a completed run is reused) or a file path.

    A fresh run refuses a run dir that already holds a checkpoint, so nothing is overwritten.
    """
    last = RunDir(out).last_ckpt
    spec = cfg.get("ckpt_path")
    if spec in (None, "", "null"):
        if last.exists():
            raise MRLError(
                f"run dir {out} already holds {last.name}; pass ckpt_path=last to resume it "
                "or choose another hydra.run.dir"
            )
        return None
    if spec == "auto":  # resume when there is something to resume, else start
        return str(last) if last.exists() else None
    if spec == "last":
        if not last.exists():
            raise MRLError(f"ckpt_path=last but {last} does not exist; drop ckpt_path to start")
        return str(last)
    path = Path(str(spec)).expanduser()
    if not path.is_file():
        raise MRLError(f"ckpt_path={spec!r} is not a file; give a .ckpt path or 'last'")
    return str(path)


def build_datamodule(cfg: DictConfig) -> pl.LightningDataModule:
    return instantiate(cfg.data)


def build_module(cfg: DictConfig, dm: Any) -> MRLLitModule:
    """The objective of ``cfg.objective`` (by its ``_target_``), completed by the data."""
    make = instantiate(cfg.objective)
    module = make(
        num_classes=int(dm.num_classes), in_chans=int(dm.in_chans), img_size=int(dm.img_size)
    )
    follow_model_transforms(dm, module)  # timm's transform for the backbone
    return module


def validate_trainer_cfg(cfg: DictConfig) -> None:
    """Mandatory values, epochs / steps, batch size and seed (the rest is checked where used)."""
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise MRLError(
            f"{missing[0]} is required ('???' in the config); set it, e.g. {missing[0]}=<value>"
        )
    t = cfg.trainer
    if t.get("max_epochs") is not None:
        integer(t.max_epochs, "trainer.max_epochs", min=1)
    if t.get("max_steps") is not None and t.max_steps != -1:
        integer(t.max_steps, "trainer.max_steps", min=1, hint="or -1 (no limit)")
    if cfg.data.get("batch_size") is not None:
        integer(cfg.data.batch_size, "data.batch_size", min=1)
    integer(cfg.get("seed"), "seed", min=0, max=2**32 - 1)


def build_trainer(cfg: DictConfig, loggers: list, callbacks: list) -> pl.Trainer:
    """The Trainer from ``cfg.trainer`` with atomic checkpoint writes (unless plugins are set)."""
    extra: dict[str, Any] = {}
    if not cfg.trainer.get("plugins"):
        extra["plugins"] = [AtomicCheckpointIO()]
        if in_submitit_job() and SLURMEnvironment.detect():  # submitit owns the requeue
            extra["plugins"].append(SLURMEnvironment(auto_requeue=False))
    try:
        return hydra.utils.instantiate(
            cfg.trainer,
            logger=loggers or False,
            callbacks=callbacks,
            _convert_="partial",
            **extra,
        )
    except hydra.errors.InstantiationException as e:
        inner = unwrap(e)
        if isinstance(inner, MRLError):
            raise inner from e
        cause = e.__cause__ or e
        first = (str(cause).strip().splitlines() or [type(cause).__name__])[0]
        raise MRLError(
            f"trainer config is invalid: {first}; see pytorch_lightning.Trainer for the valid "
            "trainer.* keys and values"
        ) from e


def train(cfg: DictConfig) -> dict[str, float]:
    """Train and test one model; return the final metrics (also in ``metrics.json``)."""
    run = RunDir(output_dir(cfg))
    run.path.mkdir(parents=True, exist_ok=True)
    previous = read_record(run.record)
    if (
        cfg.get("ckpt_path") == "auto"
        and previous.get("status") == "completed"
        and run.metrics.is_file()
    ):  # sweeps re-run by `make reproduce-table1` reuse finished jobs
        print(f"already completed: {run.path} (ckpt_path=auto reuses it)")
        return read_record(run.metrics)
    loggers: list = []
    completed = False
    with run_record(run.record, task="train", run_dir=str(run.path)) as info:
        try:
            final = _train(cfg, run, info, previous, loggers)
            completed = True
            return final
        finally:
            close_wandb(loggers, exit_code=0 if completed else 1)


def _train(cfg: DictConfig, run: RunDir, info, previous: dict, loggers: list) -> dict[str, float]:
    validate_trainer_cfg(cfg)
    out = run.path
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
        embed_dim=int(getattr(module.net, "embed_dim", module.dims[-1])),
        params=sum(p.numel() for p in module.parameters()),
    )
    if ckpt_path is not None:
        info["resumed_from"] = check_resume_checkpoint(ckpt_path, module)
        info["resumes"] = int(previous.get("resumes", 0)) + 1
        remove_stale_temp_files(run.checkpoints)
    info.save()
    log.info("%s on %s: dims=%s", module.method, info["data"], module.dims)

    extra: dict[str, dict[str, Any]] = {
        "wandb": {"name": cfg.get("run_name") or f"{module.method}-{cfg.model.name}-s{cfg.seed}"}
    }
    wandb_cfg = (cfg.get("logger") or {}).get("wandb")
    if wandb_cfg and "_target_" in wandb_cfg:
        wid = wandb_run_id(out, wandb_cfg.get("id"))
        extra["wandb"].update(id=wid, resume="allow")
        info["wandb_id"] = wid
    loggers.extend(instantiate_all(cfg.get("logger"), **extra))
    if ckpt_path is not None:  # before CSVLogger deletes the rows logged so far
        stash_csv_logs(loggers, info["resumed_from"]["global_step"])
    callbacks = instantiate_all(cfg.get("callbacks"))
    if in_submitit_job():  # requeue on pre-emption from a fresh last.ckpt (ckpt_path=auto)
        callbacks.append(PreemptionCheckpoint(run.last_ckpt))
    if not loggers:  # a learning-rate monitor needs a logger
        callbacks = [c for c in callbacks if type(c).__name__ != "LearningRateMonitor"]
    trainer = build_trainer(cfg, loggers, callbacks)
    for lg in loggers:
        lg.log_hyperparams(
            {
                **OmegaConf.to_container(cfg, resolve=True),
                "method": module.method,
                "dims": module.dims,
            }
        )

    if cfg.get("train", True):
        try:
            try:
                trainer.fit(module, datamodule=dm, ckpt_path=ckpt_path, weights_only=True)
            except (mp.ProcessRaisedException, mp.ProcessExitedException) as e:
                raise worker_error(e) from None  # strategy=ddp_spawn: one line, not a traceback
        except NonFiniteLossError as e:
            kept = (
                f"; {run.last_ckpt} holds the last good state: resume with ckpt_path=last and a "
                "lower optim.lr"
                if run.last_ckpt.is_file()
                else ""
            )
            info.update(failed_step=e.step, failed_prefix=e.prefix)
            raise NonFiniteLossError(f"{e}{kept}", e.step, e.prefix) from e
    step, epochs = int(trainer.global_step), int(trainer.current_epoch)
    if step == 0 and run.last_ckpt.is_file():  # fitted in spawned processes (ddp_spawn)
        step, epochs = fit_progress(run.last_ckpt)
    info.update(global_step=step, epochs=epochs)
    metrics = {
        k: v
        for k, v in trainer.callback_metrics.items()
        if k.startswith(("val/", "train/")) and not k.endswith("_step")
    }
    if cfg.get("test", True):
        adopt_csv_header(loggers)  # the fit may have logged from spawned processes
        trainer.test(module, datamodule=dm, verbose=False)
        metrics.update({k: v for k, v in trainer.callback_metrics.items() if k.startswith("test/")})
    merge_csv_logs(loggers)
    final = update_metrics_json(
        run.metrics, {k.removesuffix("_epoch"): v for k, v in metrics.items()}
    )
    stage = "test" if cfg.get("test", True) else "val"
    print(
        f"\n{module.method} ({cfg.model.name}, {info['data']}): {stage} accuracy (%) "
        f"per prefix\n" + prefix_table(final, module.dims, [f"{stage}/top1", f"{stage}/top5"])
    )
    print(f"run dir: {out}")
    return final


torch.set_float32_matmul_precision("high")
