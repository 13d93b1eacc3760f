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
