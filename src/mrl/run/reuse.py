"""May a finished run dir stand for a command? The check behind every resumable script.

A reproduction script reuses a completed run dir only when the command it would run now is the
one that made it: the same command-line overrides (Hydra's ``.hydra/overrides.yaml``, the run
dir setting left out) *and* the same composed config (``.hydra/config.yaml``, unresolved), so
a run made before a config default changed is never taken for a current one; nor is an
evaluation of a checkpoint file (``ckpt_path=<file>``) that was rewritten after it (its
fine-tune was re-run).
"""

from __future__ import annotations

import threading
from pathlib import Path

from mrl.run.claim import config_changes, recorded_config
from mrl.run.layout import RunDir

__all__ = ["composed_config", "recorded_overrides", "stale_reason"]

_COMPOSE = threading.Lock()  # Hydra's compose API is process-global


def composed_config(config_name: str, args: list[str]) -> dict:
    """The config ``config_name`` (``train`` or ``eval``) composes today from ``args``,
    unresolved, as Hydra records it (``hydra.*`` overrides left out: not in that file)."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from mrl.cli import CONF_DIR, register_resolvers

    with _COMPOSE:
        register_resolvers()
        with initialize_config_dir(CONF_DIR, version_base="1.3"):
            cfg = compose(config_name, overrides=[a for a in args if not a.startswith("hydra.")])
        return OmegaConf.to_container(cfg, resolve=False)


def recorded_overrides(run_dir: str | Path) -> list[str] | None:
    """The command-line overrides a run dir was made with (without its ``hydra.run.dir``), or
    None when it has no record."""
    import yaml

    try:
        made = yaml.safe_load((RunDir(run_dir).hydra_config.parent / "overrides.yaml").read_text())
    except (OSError, yaml.YAMLError):
        return None
    return [str(a) for a in made or [] if not str(a).startswith("hydra.run.dir=")]


def stale_reason(config_name: str, args: list[str], run_dir: str | Path) -> str | None:
    """Why the completed ``run_dir`` can't stand for ``<config_name> <args>`` today, or None
    if it can (also when it holds no Hydra record to compare): ``"was made by other overrides
    (...)"`` (another budget, seed or extra overrides) or ``"was made with another
    configuration: <key> (<then> then, <now> now)..."`` (same overrides, a default changed) or
    ``"was evaluated before its checkpoint <file> was rewritten"``."""
    args = [a for a in args if not a.startswith("hydra.run.dir=")]
    made_by = recorded_overrides(run_dir)
    if made_by is not None and made_by != args:
        return f"was made by other overrides ({' '.join(made_by)}), not {' '.join(args)}"
    ckpt = next((a.split("=", 1)[1] for a in args if a.startswith("ckpt_path=")), None)
    metrics = RunDir(run_dir).metrics
    if ckpt and Path(ckpt).is_file() and metrics.is_file():
        if Path(ckpt).stat().st_mtime > metrics.stat().st_mtime:
            return f"was evaluated before its checkpoint {ckpt} was rewritten"
    made = recorded_config(run_dir)
    if made is None:
        return None
    changes = config_changes(made, composed_config(config_name, args))
    if changes:
        more = f" and {len(changes) - 3} more" if len(changes) > 3 else ""
        return f"was made with another configuration: {'; '.join(changes[:3])}{more}"
    return None
