"""Helpers for tests: compose the real Hydra configs, run the real CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"


def compose_cfg(config_name: str, out_dir: Path, *overrides: str) -> DictConfig:
    """Compose ``conf/<config_name>.yaml`` as the CLI would, with the run dir at ``out_dir``."""
    from mrl.cli import register_resolvers

    register_resolvers()
    with initialize_config_dir(str(CONF), version_base="1.3"):
        return compose(
            config_name,
            overrides=[f"paths.output_dir={out_dir}", f"paths.root_dir={ROOT}", *overrides],
        )


def run_cli(*args: str, cwd: Path = ROOT, env: dict | None = None, timeout: int = 600):
    """Run ``python <args>`` from the repo root; returns the CompletedProcess."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run(
        [sys.executable, *args],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
