"""Shared fixtures; W&B never goes online or prompts in tests."""

import os
import shutil

import pytest
from omegaconf import DictConfig

from mrl_test_utils import compose_cfg

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # `make test` runs two pytest workers on two cores: one thread each (and in the
    # train.py / eval.py subprocesses they start), so they do not oversubscribe the CPU
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("MKL_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)


SHARED = ("trained", "trained.lock")  # trained_run's run dir and lock, shared by every module


@pytest.fixture(scope="module", autouse=True)
def free_module_disk(request, tmp_path_factory):
    """Deletes what a module's fixtures wrote under the base temp dir (runs with checkpoints
    of a few hundred MB each) once the module ends with no failure, so `make test` holds one
    module's runs per worker on disk, not all of them; a failing module keeps its files."""
    base = tmp_path_factory.getbasetemp()
    before = {p.name for p in base.iterdir()}
    failed = request.session.testsfailed
    yield
    if request.session.testsfailed == failed:
        for p in base.iterdir():
            if p.name not in before and p.name not in SHARED:
                shutil.rmtree(p, ignore_errors=True)


@pytest.fixture
def cfg_factory(tmp_path):
    def make(*overrides: str, name: str = "train") -> DictConfig:
        return compose_cfg(name, tmp_path / "run", *overrides)

    return make


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory):
    """One short real training run (MRL, ResNet-18, 4000 Fashion-MNIST images, 1 epoch),
    shared by the training and evaluation tests (read-only). Returns (run dir, metrics).
    Under `make test`'s two workers the first one to ask trains it, under a file lock, and
    the other reads the same run."""
    import json

    from filelock import FileLock

    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # shared by the workers of one pytest call
    out = root / SHARED[0] / "run"
    with FileLock(str(root / SHARED[1])):
        done = out.parent / "returned_metrics.json"  # beside the run dir, not in it
        if not done.exists():
            done.write_text(json.dumps(_train_once(out), default=float))
    return out, json.loads(done.read_text())


def _train_once(out):
    from omegaconf import OmegaConf

    from mrl.tasks.train import train

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
    (out / ".hydra").mkdir(exist_ok=True)
    OmegaConf.save(cfg, out / ".hydra" / "config.yaml")
    return metrics


def pytest_collection_modifyitems(config, items):
    """Files with slow (training) tests first, each file's own order kept: `make test` hands
    whole files to two workers in this order, so the long files start early and the short
    ones fill the gaps at the end."""
    slow = {item.path for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.path not in slow)
