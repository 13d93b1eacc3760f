"""Shared fixtures; W&B never goes online or prompts in tests."""

import os

import pytest
from omegaconf import DictConfig

from mrl_test_utils import compose_cfg

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")


@pytest.fixture
def cfg_factory(tmp_path):
    def make(*overrides: str, name: str = "train") -> DictConfig:
        return compose_cfg(name, tmp_path / "run", *overrides)

    return make


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory):
    """One short real training run (MRL, ResNet-18, 4000 Fashion-MNIST images, 1 epoch),
    shared by the training and evaluation tests. Returns (run dir, metrics)."""
    from mrl.tasks.train import train

    out = tmp_path_factory.mktemp("trained") / "run"
    cfg = compose_cfg(
        "train",
        out,
        "logger=csv",
        "trainer.max_epochs=1",
        "data.subset=4000",
        "data.val_size=500",
        "data.batch_size=64",
        "trainer.limit_test_batches=16",
    )
    metrics = train(cfg)
    # what Hydra's CLI writes into every run dir (eval.py reads the data config from it)
    from omegaconf import OmegaConf

    (out / ".hydra").mkdir(exist_ok=True)
    OmegaConf.save(cfg, out / ".hydra" / "config.yaml")
    return out, metrics
