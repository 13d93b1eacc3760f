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
import os
from pathlib import Path
from typing import Any

import hydra
import pytorch_lightning as pl
import torch
import torch.multiprocessing as mp
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.plugins.environments import SLURMEnvironment
from pytorch_lightning.utilities.exceptions import SIGTERMException

from mrl.core.errors import MRLError, NonFiniteLossError, Terminated
from mrl.core.validate import integer
from mrl.data.base import follow_model_transforms
from mrl.eval.report import prefix_table
from mrl.objectives.classification import MRLLitModule
from mrl.run.checkpoints import AtomicCheckpointIO, fit_progress, remove_stale_temp_files
from mrl.run.claim import RunDirClaim, config_changes, recorded_config
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
from mrl.tasks.instantiate import (
    artifact_settings,
    best_checkpoint,
    close_wandb,
    instantiate,
    instantiate_all,
    log_prefix_table,
    log_run_artifacts,
    report_skipped,
    unwrap,
)

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


def terminated(run: RunDir, trainer: pl.Trainer, stage: str) -> Terminated:
    """The one-line error of a run stopped by SIGTERM (exit status 143)."""
    kept = (
        f"{run.last_ckpt} holds step {fit_progress(run.last_ckpt)[0]}: resume with ckpt_path=last"
        if run.last_ckpt.is_file()
        else "no checkpoint was written yet: run the command again"
    )
    return Terminated(f"terminated by SIGTERM while {stage} at step {trainer.global_step}; {kept}")


def build_datamodule(cfg: DictConfig) -> pl.LightningDataModule:
    return instantiate(cfg.data)


def build_module(cfg: DictConfig, dm: Any) -> MRLLitModule:
    """The objective of ``cfg.objective`` (by its ``_target_``), completed by the data."""
    make = instantiate(cfg.objective)
    # what the data has of num_classes / in_chans / img_size (text data: no image sizes)
    given = {k: getattr(dm, k, None) for k in ("num_classes", "in_chans", "img_size")}
    try:
        module = make(**{k: int(v) for k, v in given.items() if v is not None})
    except TypeError as e:  # e.g. objective=classification on text data
        if f"{make.func.__name__}.__init__()" not in str(e):
            raise
        raise MRLError(
            f"objective {cfg.objective._target_} does not fit data "
            f"{getattr(dm, 'name', '?')!r}: {e}"
        ) from e
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
    """Train and test one model; return the final metrics (also in ``metrics.json``).

    The run dir is locked for the whole run, and nothing in it is written until the command
    has passed every check (:mod:`mrl.run.claim`): a refused command leaves it as it was.
    """
    run = RunDir(output_dir(cfg))
    with RunDirClaim(run.path, "train") as claim:
        previous = claim.previous
        if (
            cfg.get("ckpt_path") == "auto"
            and previous.get("status") == "completed"
            and run.metrics.is_file()
        ):  # sweeps re-run by `make reproduce-table1` reuse finished jobs
            made = recorded_config(run.path)
            now = OmegaConf.to_container(cfg, resolve=False)
            changes = [] if made is None else config_changes(made, now, ignore=("ckpt_path",))
            if changes:
                more = f" and {len(changes) - 1} more" if len(changes) > 1 else ""
                raise MRLError(
                    f"ckpt_path=auto: {run.path} was completed with another config "
                    f"({changes[0]}{more}); it is reused only for the same config: use another "
                    "hydra.run.dir, or remove that run dir to train again"
                )
            print(f"already completed: {run.path} (ckpt_path=auto reuses it)")
            return read_record(run.metrics)
        if claim.fresh:  # a new run dir: nothing to protect, record the command at once
            claim.commit(cfg)
        loggers: list = []
        completed = False
        with run_record(
            claim.record_path, defer=not claim.fresh, task="train", run_dir=str(run.path)
        ) as info:
            try:
                final = _train(cfg, run, info, previous, loggers, claim)
                completed = True
                return final
            finally:
                close_wandb(loggers, exit_code=0 if completed else 1)


def retire_metrics(run: RunDir) -> Path | None:
    """Move an earlier ``metrics.json`` to ``metrics.previous-<n>.json`` (never mixed, never
    lost) before a run that will write new ones; returns where it went."""
    if not run.metrics.is_file():
        return None
    n = 1
    while (dest := run.path / f"metrics.previous-{n}.json").exists():
        n += 1
    os.replace(run.metrics, dest)
    return dest


def _train(
    cfg: DictConfig, run: RunDir, info, previous: dict, loggers: list, claim: RunDirClaim
) -> dict[str, float]:
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

    extra: dict[str, dict[str, Any]] = {
        "wandb": {"name": cfg.get("run_name") or f"{module.method}-{cfg.model.name}-s{cfg.seed}"}
    }
    wandb_cfg = (cfg.get("logger") or {}).get("wandb")
    wid = None
    if wandb_cfg and "_target_" in wandb_cfg:
        wid = wandb_run_id(out, wandb_cfg.get("id"), write=False)
        extra["wandb"].update(id=wid, resume="allow")
        info["wandb_id"] = wid
    loggers.extend(instantiate_all(cfg.get("logger"), **extra))
    callbacks = instantiate_all(cfg.get("callbacks"))
    if in_submitit_job():  # requeue on pre-emption from a fresh last.ckpt (ckpt_path=auto)
        callbacks.append(PreemptionCheckpoint(run.last_ckpt))
    if not loggers:  # a learning-rate monitor needs a logger
        callbacks = [c for c in callbacks if type(c).__name__ != "LearningRateMonitor"]
    for cb in callbacks:  # the evaluators' size checks, before any training
        if hasattr(cb, "check_data"):
            cb.check_data(dm, module)
    trainer = build_trainer(cfg, loggers, callbacks)

    # Every check passed: from here on the run dir is this command's (rank 0's: ranks started
    # by Lightning's script launcher run this task too, and write nothing of their own).
    claim.commit(cfg, creator=ckpt_path is None)
    if not claim.child:
        info.commit()
        if wid is not None:
            wandb_run_id(out, wid)
        moved = retire_metrics(run)
        if moved is not None:
            info["previous_metrics"] = moved.name
        if ckpt_path is not None:
            remove_stale_temp_files(run.checkpoints)
            stash_csv_logs(loggers, info["resumed_from"]["global_step"])  # before CSVLogger
        info.save()
    log.info("%s on %s: dims=%s", module.method, info["data"], module.dims)
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
        except SIGTERMException:
            raise terminated(run, trainer, "training") from None
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
        try:
            trainer.test(module, datamodule=dm, verbose=False)
        except SIGTERMException:
            raise terminated(run, trainer, "testing") from None
        metrics.update({k: v for k, v in trainer.callback_metrics.items() if k.startswith("test/")})
    merge_csv_logs(loggers)
    report_skipped(dm, info)
    final = update_metrics_json(
        run.metrics, {k.removesuffix("_epoch"): v for k, v in metrics.items()}
    )
    stage = "test" if cfg.get("test", True) else "val"
    names = getattr(module, "report_metrics", None)  # text objectives: nDCG@10, R@10, ...
    # W&B (mrl.tasks.instantiate): the per-prefix table and the run's artifacts
    columns = [f"{stage}/{n}" for n in names or ("top1", "top5")]
    log_prefix_table(loggers, f"{stage}/per_prefix", final, module.dims, columns)
    settings = artifact_settings(cfg.get("logger"))
    info.update(log_run_artifacts(loggers, out, settings, best_checkpoint(trainer)))
    print(
        f"\n{module.method} ({cfg.model.name}, {info['data']}): {stage} "
        f"{', '.join(names) if names else 'accuracy'} (%) per prefix\n"
        + prefix_table(final, module.dims, [f"{stage}/{n}" for n in names or ("top1", "top5")])
    )
    print(f"run dir: {out}")
    return final


torch.set_float32_matmul_precision("high")
