"""The one place that names a run dir's files.

A run dir (Hydra's output dir, ``hydra.run.dir=...``) holds::

    .hydra/config.yaml       the resolved config (written by Hydra)
    run.json                 the run record: task, status, method, dims, seconds, error
    metrics.json             flat {metric: value}, fractions in [0, 1]
    checkpoints/last.ckpt    the resume point; checkpoints/epochNNN.ckpt the best by val/top1
    embeddings/              the evaluation cache ({split}_{x,y}.npy + meta.json)
    plots/metric_vs_dim.png  the per-prefix plot
    eval_timing.json         seconds per evaluation step
    csv/, wandb/, wandb_id.txt
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

CHECKPOINTS = "checkpoints"
LAST = "last.ckpt"


@dataclass(frozen=True)
class RunDir:
    """Paths inside one run dir (nothing is created by constructing it)."""

    path: Path

    def __init__(self, path: str | Path) -> None:
        object.__setattr__(self, "path", Path(path))

    @property
    def record(self) -> Path:
        return self.path / "run.json"

    @property
    def metrics(self) -> Path:
        return self.path / "metrics.json"

    @property
    def checkpoints(self) -> Path:
        return self.path / CHECKPOINTS

    @property
    def last_ckpt(self) -> Path:
        return self.checkpoints / LAST

    @property
    def embeddings(self) -> Path:
        return self.path / "embeddings"

    @property
    def plot(self) -> Path:
        return self.path / "plots" / "metric_vs_dim.png"

    @property
    def eval_timing(self) -> Path:
        return self.path / "eval_timing.json"

    @property
    def hydra_config(self) -> Path:
        return self.path / ".hydra" / "config.yaml"

    @property
    def wandb_id(self) -> Path:
        return self.path / "wandb_id.txt"


def run_dir_of(ckpt: str | Path) -> RunDir | None:
    """The run dir above a checkpoint (the first parent with ``.hydra/config.yaml``)."""
    for parent in Path(ckpt).expanduser().resolve().parents:
        if RunDir(parent).hydra_config.is_file():
            return RunDir(parent)
    return None
