"""Config -> objects, shared by the training and evaluation tasks (neither imports the other)."""

from __future__ import annotations

import inspect
import json
import logging
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig

from mrl.core.errors import MRLError

log = logging.getLogger(__name__)


def unwrap(e: BaseException) -> BaseException:
    """Hydra wraps constructor errors; the :class:`MRLError` inside, if any, else ``e``."""
    cur: BaseException | None = e
    seen: set[int] = set()  # a chain can loop back on itself
    while cur is not None and id(cur) not in seen:
        if isinstance(cur, MRLError):
            return cur
        seen.add(id(cur))
        cur = cur.__cause__ or cur.__context__
    return e


_UNEXPECTED = re.compile(r"unexpected keyword argument '(\w+)'")
_FULL_KEY = re.compile(r"full_key: ([\w.]+)")


def _unknown_setting(node: Any, e: BaseException) -> MRLError | None:
    """A one-line error for a setting the target class does not take (``+data.split=...``)."""
    found = _UNEXPECTED.search(str(e.__cause__ or e))
    target = node.get("_target_") if hasattr(node, "get") else None
    if not found or not target:
        return None
    try:
        cls = hydra.utils.get_class(str(target))
        named = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
        valid = sorted(  # every named __init__ argument along the MRO (**common included)
            {
                q.name
                for c in cls.__mro__
                if "__init__" in vars(c)
                for q in inspect.signature(vars(c)["__init__"]).parameters.values()
                if q.kind in named and q.name != "self"
            }
        )
    except Exception:  # a function target, or a class without a readable signature
        valid = []
    where = _FULL_KEY.search(str(e))
    key = where.group(1) if where else "the config"
    return MRLError(
        f"{key}.{found.group(1)} is not a setting of {str(target).rsplit('.', 1)[-1]}"
        + (f"; valid settings: {', '.join(valid)}" if valid else "")
    )


def instantiate(node: Any, **kwargs: Any) -> Any:
    """``hydra.utils.instantiate`` that surfaces a constructor's :class:`MRLError` and names
    an unknown setting in one line."""
    try:
        return hydra.utils.instantiate(node, **kwargs)
    except hydra.errors.InstantiationException as e:
        inner = unwrap(e)
        if inner is e:
            inner = _unknown_setting(node, e) or e
        if inner is e:
            raise
        raise inner from e


def instantiate_all(node: DictConfig | Mapping | None, **extra: Mapping[str, Any]) -> list:
    """Every child of ``node`` that has a ``_target_`` (loggers, callbacks), in order;
    ``extra[name]`` adds keyword arguments to child ``name``."""
    if not node:
        return []
    return [
        instantiate(sub, **extra.get(name, {}))
        for name, sub in node.items()
        if sub is not None and "_target_" in sub
    ]


def close_wandb(loggers: list, exit_code: int = 0) -> None:
    """Always close the W&B run, so each job of a sweep gets its own run."""
    if any(type(lg).__name__ == "WandbLogger" for lg in loggers):
        import wandb

        if wandb.run is not None:
            wandb.finish(exit_code=exit_code)


def report_skipped(dm: Any, record: dict) -> None:
    """Name the unreadable images a ``skip_corrupt`` data module dropped, in the log and in the
    run record (``skipped_images``: the count; ``skipped_files``: the first 100 paths)."""
    skipped = list(getattr(dm, "skipped_files", None) or [])
    if not skipped:
        return
    record.update(skipped_images=len(skipped), skipped_files=skipped[:100])
    log.warning(
        "skipped %d unreadable image(s) (data.skip_corrupt=true), e.g. %s; all are listed in "
        "the run record",
        len(skipped),
        skipped[0],
    )


# ----------------------------------------------------------------------------- W&B
# What train.py / eval.py log to W&B besides the metrics (see conf/logger/wandb.yaml):
#
# * artifacts at the end of a run: the checkpoints as ``model-<run id>`` (type ``model``, one
#   file ``model.ckpt``, Lightning's ``log_model`` naming; the best-by-val version with alias
#   ``best`` first, then ``last.ckpt`` with ``latest``) and the embedding cache as
#   ``embeddings-<run id>`` (type ``embeddings``, alias ``latest``); each logged artifact is
#   listed in the run record under ``wandb_artifacts``. Lightning's own ``log_model`` refuses
#   offline runs, hence these helpers; offline, ``wandb sync`` uploads the artifacts later.
# * an eval run is linked to the training run of its checkpoint: the same W&B ``group``,
#   ``job_type: eval`` and, in its config, ``trained_by`` (the training run's W&B id, name,
#   project, run dir, resolved config and the checkpoint artifact) plus ``eval`` (the eval
#   command's config). Online, the checkpoint's artifact is marked as used
#   (``run.use_artifact``) when the training run logged that very file; W&B cannot do that
#   offline, where ``trained_by.artifact`` names it instead.

#: defaults of ``logger.wandb_artifacts`` (a node without ``_target_``: no logger)
ARTIFACT_DEFAULTS = {"checkpoints": True, "embeddings": True, "reference_above_mb": 2048}


def wandb_loggers(loggers: list) -> list:
    """The W&B loggers among ``loggers`` (Lightning's ``WandbLogger`` or a subclass)."""
    return [lg for lg in loggers if any(c.__name__ == "WandbLogger" for c in type(lg).__mro__)]


def artifact_settings(logger_cfg: Mapping | None) -> dict[str, Any]:
    """``logger.wandb_artifacts`` over :data:`ARTIFACT_DEFAULTS` (unknown keys: a warning)."""
    given = dict((logger_cfg or {}).get("wandb_artifacts") or {})
    for key in sorted(set(given) - set(ARTIFACT_DEFAULTS)):  # read at the end of a run: warn
        log.warning(
            "logger.wandb_artifacts.%s is not a setting (ignored); use %s",
            key,
            sorted(ARTIFACT_DEFAULTS),
        )
    return {**ARTIFACT_DEFAULTS, **{k: v for k, v in given.items() if k in ARTIFACT_DEFAULTS}}


def _folder_mb(folder: Path) -> float:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) / 2**20


def _log_artifact(
    experiment: Any,
    name: str,
    kind: str,
    path: Path,
    aliases: list[str],
    metadata: dict,
    reference_above_mb: float | None = None,
) -> dict[str, Any]:
    import wandb

    artifact = wandb.Artifact(name=name, type=kind, metadata=metadata)
    if path.is_dir():
        if reference_above_mb is not None and _folder_mb(path) > float(reference_above_mb):
            artifact.add_reference(path.resolve().as_uri(), name=path.name)  # not uploaded
        else:
            artifact.add_dir(str(path))
    else:
        artifact.add_file(str(path), name="model.ckpt" if kind == "model" else path.name)
    experiment.log_artifact(artifact, aliases=aliases)
    small = {k: v for k, v in metadata.items() if k != "meta"}  # the record stays short
    return {"name": name, "type": kind, "aliases": aliases, "path": str(path), **small}


def best_checkpoint(trainer: Any) -> str | None:
    """The best checkpoint of the trainer's monitoring ``ModelCheckpoint`` (None if none)."""
    for cb in getattr(trainer, "checkpoint_callbacks", []):
        if getattr(cb, "monitor", None) and getattr(cb, "best_model_path", ""):
            return str(cb.best_model_path)
    return None


def log_run_artifacts(
    loggers: list,
    run_dir: str | Path,
    settings: Mapping[str, Any],
    best_ckpt: str | Path | None = None,
) -> dict[str, Any]:
    """Log the run dir's checkpoints (``best_ckpt`` alias ``best``, ``last.ckpt`` alias
    ``latest``) and embedding cache as W&B artifacts (see above); returns the run record's
    ``wandb_artifacts`` (what was logged) and ``wandb_name`` (``{}`` without a W&B logger)."""
    from mrl.eval.cache import file_fingerprint
    from mrl.run.layout import RunDir

    run, logged, out = RunDir(run_dir), [], {}
    for lg in wandb_loggers(loggers):
        exp = lg.experiment
        out["wandb_name"] = exp.name
        if settings.get("checkpoints", True):
            files: dict[Path, list[str]] = {}
            if best_ckpt and Path(best_ckpt).is_file():
                files[Path(best_ckpt).resolve()] = ["best"]
            if run.last_ckpt.is_file():
                files.setdefault(run.last_ckpt.resolve(), []).append("latest")
            for path, aliases in files.items():
                meta = {"file": path.name, "fingerprint": file_fingerprint(path)}
                logged.append(_log_artifact(exp, f"model-{exp.id}", "model", path, aliases, meta))
        meta_file = run.embeddings / "meta.json"
        if settings.get("embeddings", True) and meta_file.is_file():
            logged.append(
                _log_artifact(
                    exp,
                    f"embeddings-{exp.id}",
                    "embeddings",
                    run.embeddings,
                    ["latest"],
                    {"meta": json.loads(meta_file.read_text())},
                    settings.get("reference_above_mb"),
                )
            )
        out["wandb_artifacts"] = logged
    return out


def log_prefix_table(
    loggers: list, key: str, metrics: Mapping[str, float], dims: list[int], names: list[str]
) -> None:
    """A W&B table ``key``: one row per prefix, one column per metric ``{name}@d{m}``."""
    for lg in wandb_loggers(loggers):
        import wandb

        rows = [[m, *[metrics.get(f"{n}@d{m}") for n in names]] for m in dims]
        lg.experiment.log({key: wandb.Table(columns=["dim", *names], data=rows)})


def trained_by(ckpt: str | Path) -> dict[str, Any]:
    """What an eval run records of the training run of ``ckpt`` (``{}`` when the checkpoint
    lies in no run dir): ``run_dir``, ``config`` (its ``.hydra/config.yaml``), ``wandb_id``
    (``wandb_id.txt``), ``name``, ``group``, ``project`` and ``artifact`` (the
    ``model-<id>:<alias>`` the training run logged for this very file, else absent)."""
    from omegaconf import OmegaConf

    from mrl.eval.cache import file_fingerprint
    from mrl.run.layout import run_dir_of
    from mrl.run.record import read_record

    run = run_dir_of(ckpt)
    if run is None:
        return {}
    config: dict = {}
    for resolve in (True, False):  # ${hydra:...} cannot resolve outside Hydra: keep it as is
        try:
            config = OmegaConf.to_container(OmegaConf.load(run.hydra_config), resolve=resolve)
            break
        except Exception:  # noqa: BLE001 - an unreadable config only loses the copy
            continue
    wandb_cfg = ((config.get("logger") or {}).get("wandb") or {}) if config else {}
    record = read_record(run.record)
    out: dict[str, Any] = {
        "run_dir": str(run.path),
        "wandb_id": run.wandb_id.read_text().strip() if run.wandb_id.is_file() else None,
        "name": record.get("wandb_name"),
        "group": wandb_cfg.get("group") if isinstance(wandb_cfg.get("group"), str) else None,
        "project": wandb_cfg.get("project"),
        "config": config,
    }
    if out["group"] is None or "${" in str(out["group"]):
        out["group"] = config.get("task_name", "train") if config else "train"
    fp = file_fingerprint(ckpt)
    for art in record.get("wandb_artifacts") or []:
        if art.get("type") == "model" and art.get("fingerprint") == fp:
            out["artifact"] = f"{art['name']}:{art['aliases'][0]}"
            break
    return out


def eval_init_kwargs(link: Mapping[str, Any]) -> dict[str, Any]:
    """Extra ``wandb.init`` arguments of an eval run: the training run's ``group``,
    ``job_type: eval``."""
    return {"job_type": "eval", **({"group": link["group"]} if link.get("group") else {})}


def link_to_training(loggers: list, link: Mapping[str, Any], eval_cfg: Mapping) -> dict:
    """Store ``trained_by`` (:func:`trained_by`) and ``eval`` (the eval command's config) in
    the eval run's W&B config and, online, mark the checkpoint's artifact as used.

    Returns the run record's ``trained_by``: ``run_dir``, ``wandb_id``, ``artifact`` and
    ``artifact_used`` (``{}`` without a W&B logger).
    """
    out: dict[str, Any] = {}
    for lg in wandb_loggers(loggers):
        exp = lg.experiment
        exp.config.update({"trained_by": dict(link), "eval": dict(eval_cfg)}, allow_val_change=True)
        art, used = link.get("artifact"), False
        if art and not getattr(exp.settings, "_offline", True):
            project = link.get("project") or exp.project
            try:
                exp.use_artifact(f"{exp.entity}/{project}/{art}", type="model")
                used = True
            except Exception as e:  # noqa: BLE001 - not synced yet: the config still links
                log.warning("could not mark W&B artifact %s as used: %s", art, e)
        out = {k: link.get(k) for k in ("run_dir", "wandb_id", "artifact")}
        out["artifact_used"] = used
    return out
