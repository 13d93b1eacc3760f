"""Reliability: resume after a kill, determinism, atomic files, safe loading, sweeps.

Runs are tiny (timm's ``test_efficientnet``, a few Fashion-MNIST batches) so the module stays
fast; what they check does not depend on the model.

Memory of large evaluations (not tested here): nearest-neighbour search runs the queries in
chunks of ``query_chunk`` rows (``mrl.eval.search.search_index``, default 4096) against a
FAISS flat index, so the working memory is ``query_chunk x k`` scores plus the index;
``mrl.eval.linear.head_logits`` feeds cached embeddings to the heads in batches of 8192.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from mrl import MRLError
from mrl.core.errors import NonFiniteLossError
from mrl.objectives.classification import MRLLitModule
from mrl.run.checkpoints import AtomicCheckpointIO, remove_stale_temp_files
from mrl.run.files import update_metrics_json
from mrl.run.resume import LastCheckpoint
from mrl.tasks.train import build_trainer, train
from mrl_test_utils import CONF, ROOT, compose_cfg, run_cli, wait_for_file

TINY = (
    "model=timm",
    "model.name=test_efficientnet",
    "data.batch_size=16",
    "data.val_size=16",
    "data.test_subset=32",
    "~callbacks.rich_progress_bar",
)


def _json(path: Path) -> dict:
    return json.loads(path.read_text())


class _Killed(Exception):
    """Stands for SIGKILL right after the epoch-end checkpoint (nothing else is written)."""


def _die_after_first_epoch(monkeypatch) -> None:
    """Make training die right after the first epoch's last.ckpt is written (a kill)."""
    save = LastCheckpoint.on_train_epoch_end

    def save_then_die(self, trainer, pl_module):
        save(self, trainer, pl_module)
        if trainer.current_epoch == 0:
            raise _Killed

    monkeypatch.setattr(LastCheckpoint, "on_train_epoch_end", save_then_die)


# ----------------------------------------------------------------------------- resume + determinism
def test_resume_after_epoch_equals_uninterrupted_and_same_seed_same_metrics(tmp_path, monkeypatch):
    args = (*TINY, "logger=csv", "data.subset=48", "trainer.max_epochs=2")  # 3 steps per epoch

    def cfg(name: str, *extra: str):
        return compose_cfg("train", tmp_path / name, *args, *extra)

    train(cfg("a"))
    train(cfg("b"))
    a, b = _json(tmp_path / "a" / "metrics.json"), _json(tmp_path / "b" / "metrics.json")
    assert a == b  # determinism: the same command and seed, exactly the same numbers
    assert len(a) > 20 and "test/top1" in a and "val/top1" in a and "train/loss" in a
    ckpts = sorted(p.name for p in (tmp_path / "a" / "checkpoints").iterdir())
    assert ckpts[-1] == "last.ckpt" and len(ckpts) == 2 and ckpts[0].startswith("epoch")
    assert torch.load(tmp_path / "a/checkpoints/last.ckpt", weights_only=True)["global_step"] == 6

    _die_after_first_epoch(monkeypatch)
    with pytest.raises(_Killed):
        train(cfg("c"))
    monkeypatch.undo()
    assert _json(tmp_path / "c" / "run.json")["status"] == "failed"
    assert not (tmp_path / "c" / "metrics.json").exists()

    train(cfg("c", "ckpt_path=last"))
    run = _json(tmp_path / "c" / "run.json")
    assert run["status"] == "completed" and run["resumes"] == 1
    assert run["resumed_from"]["epoch"] == 0 and run["resumed_from"]["global_step"] == 3
    assert run["global_step"] == 6
    c = _json(tmp_path / "c" / "metrics.json")
    print("\nmetric                   uninterrupted        resumed")
    for k in (
        "train/loss",
        "train/loss@d8",
        "val/top1",
        "test/top1",
        "test/top1@d8",
        "test/top5@d8",
    ):
        print(f"{k:22s} {a[k]:.10f} {c[k]:.10f}")
    assert c == a
    # the CSV history survives the resume: the uninterrupted run's rows, less the epoch-0
    # train-epoch row that Lightning logs just after the checkpoint (lost with the kill)
    assert not list((tmp_path / "c" / "csv").glob("metrics.part-*"))
    ra, rc = [(tmp_path / r / "csv" / "metrics.csv").read_text().splitlines() for r in "ac"]
    assert ra[0] == rc[0] and set(rc) <= set(ra) and len(rc) == len(ra) - 1


def test_sigkill_mid_epoch_then_resume_finishes_one_wandb_run_and_no_secret(tmp_path):
    out = tmp_path / "run"
    args = [
        "train.py",
        *TINY,
        "data.subset=96",  # 6 steps per epoch
        "trainer.max_epochs=2",
        "callbacks.last_checkpoint.every_n_train_steps=2",
        f"hydra.run.dir={out}",
    ]
    secret = "secret-123-never-log"
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_API_KEY": secret, "WANDB_SILENT": "true"}
    with open(tmp_path / "first.log", "w") as log:
        proc = subprocess.Popen(
            [sys.executable, *args],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: W&B's service dies with it
        )
        try:
            wait_for_file(proc, "checkpoints/last.ckpt", out, tmp_path / "first.log")
        finally:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert _json(out / "run.json")["status"] == "running"  # killed: nothing more was written

    r = run_cli(*args, "ckpt_path=last", env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    run = _json(out / "run.json")
    assert run["status"] == "completed" and run["global_step"] == 12
    assert run["resumed_from"]["global_step"] % 6 != 0  # it was killed mid-epoch
    assert "test/top1" in _json(out / "metrics.json")
    wid = (out / "wandb_id.txt").read_text().strip()
    runs = sorted((out / "wandb").glob("offline-run-*"))
    assert len(runs) == 2 and {p.name.rsplit("-", 1)[-1] for p in runs} == {wid}
    assert run["wandb_id"] == wid
    leaked = [p for p in out.rglob("*") if p.is_file() and secret.encode() in p.read_bytes()]
    assert not leaked, leaked
    assert (out / ".hydra" / "config.yaml").is_file() and (out / "train.log").is_file()


# ----------------------------------------------------------------------------- numerical faults
def test_nan_loss_names_step_and_prefix_and_keeps_last_good_checkpoint(tmp_path, monkeypatch):
    step = MRLLitModule.training_step

    def poisoned(self, batch, batch_idx):
        x, y = batch
        if self.global_step == 3:
            x = x * float("nan")
        return step(self, (x, y), batch_idx)

    monkeypatch.setattr(MRLLitModule, "training_step", poisoned)
    out = tmp_path / "nan"
    cfg = compose_cfg(
        "train",
        out,
        *TINY,
        "logger=csv",
        "data.subset=96",
        "trainer.max_epochs=1",
        "callbacks.last_checkpoint.every_n_train_steps=1",
    )
    with pytest.raises(NonFiniteLossError) as info:
        train(cfg)
    msg = str(info.value)
    assert "\n" not in msg and "non-finite loss nan at step 3" in msg and "prefix d8" in msg
    assert "last.ckpt holds the last good state" in msg and "optim.lr" in msg
    run = _json(out / "run.json")
    assert run["status"] == "failed" and run["failed_step"] == 3 and run["failed_prefix"] == 8
    last = out / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=True)["global_step"] == 3
    from mrl.tasks.evaluate import load_module

    module = load_module(last)
    assert all(
        torch.isfinite(t).all() for t in module.state_dict().values() if t.is_floating_point()
    )


# ----------------------------------------------------------------------------- checkpoint files
def test_interrupted_checkpoint_write_keeps_the_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "last.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint({"step": 1, "w": torch.ones(8)}, path)

    def dies_half_way(obj, f, *a, **k):
        f.write(b"PK\x03\x04 half a checkpoint")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", dies_half_way)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint({"step": 2, "w": torch.zeros(8)}, path)
    monkeypatch.undo()
    assert torch.load(path, weights_only=True)["step"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]


_SAVER = """
import sys, torch
from mrl.run.checkpoints import AtomicCheckpointIO
io, path, i = AtomicCheckpointIO(), sys.argv[1], 0
while True:
    i += 1
    io.save_checkpoint({"i": i, "w": torch.full((2_000_000,), float(i))}, path)
    if i == 2:
        print("ready", flush=True)
"""


def test_sigkill_during_checkpoint_writes_leaves_a_loadable_file(tmp_path):
    path = tmp_path / "last.ckpt"
    proc = subprocess.Popen(
        [sys.executable, "-c", _SAVER, str(path)], stdout=subprocess.PIPE, text=True, cwd=ROOT
    )
    try:
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(0.5)
    finally:
        proc.kill()
        proc.wait()
    ckpt = torch.load(path, weights_only=True)
    assert ckpt["i"] >= 2 and bool((ckpt["w"] == float(ckpt["i"])).all())
    assert len(remove_stale_temp_files(tmp_path)) <= 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]


def test_trainer_uses_the_atomic_checkpoint_writer(tmp_path):
    trainer = build_trainer(compose_cfg("train", tmp_path, *TINY, "logger=csv"), [], [])
    assert isinstance(trainer.strategy.checkpoint_io, AtomicCheckpointIO)


def test_embedding_cache_with_pickled_objects_is_refused(tmp_path):
    from mrl.eval.cache import load_embeddings

    class Evil:
        def __reduce__(self):
            return (os.mkdir, (str(tmp_path / "pwned"),))

    bad = tmp_path / "embeddings.npz"
    np.savez(bad, train_x=np.array([Evil()], dtype=object), train_y=np.zeros(1))
    with pytest.raises(MRLError, match="unreadable"):
        load_embeddings(bad)
    assert not (tmp_path / "pwned").exists()
    evil_ckpt = tmp_path / "evil.ckpt"
    evil_ckpt.write_bytes(pickle.dumps({"state_dict": Evil()}, protocol=2))
    from mrl.run.resume import check_resume_checkpoint

    with pytest.raises(MRLError, match="cannot be loaded safely"):
        check_resume_checkpoint(evil_ckpt, None)  # refused before the module is looked at
    assert not (tmp_path / "pwned").exists()


# ----------------------------------------------------------------------------- sweeps
def _writer(path: str, wid: int, n: int) -> None:
    for i in range(n):
        update_metrics_json(path, {f"w{wid}/k{i}": float(i)})


def test_concurrent_metrics_writers_lose_nothing(tmp_path):
    path = str(tmp_path / "metrics.json")
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_writer, args=(path, w, 25)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0, 0, 0, 0]
    data = _json(Path(path))
    assert len(data) == 100 and data["w3/k24"] == 24.0


_RUN_DIR = f"""
from hydra import compose, initialize_config_dir
from hydra.core.utils import setup_globals
from omegaconf import OmegaConf
from mrl.cli import register_resolvers
setup_globals()
register_resolvers()
with initialize_config_dir({str(CONF)!r}, version_base="1.3"):
    cfg = compose("train", overrides=["paths.root_dir={ROOT}"], return_hydra_config=True)
print(OmegaConf.select(cfg, "hydra.run.dir"), OmegaConf.select(cfg, "hydra.sweep.dir"))
"""


def test_runs_started_together_never_share_a_run_dir():
    procs = [
        subprocess.Popen([sys.executable, "-c", _RUN_DIR], stdout=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=300)[0].split() for p in procs]
    assert all(len(o) == 2 for o in outs), outs
    (run1, sweep1), (run2, sweep2) = outs
    assert run1 != run2 and sweep1 != sweep2
    assert run1.rsplit("_", 1)[1] != run2.rsplit("_", 1)[1]  # the per-process random id


def test_embedding_cache_memory_maps_in_place(tmp_path):
    """The cache folder's .npy files are memory-mapped (no read into RAM) with the same values;
    copy-on-write leaves the files unchanged; an .npz is read into memory; pickles are refused."""
    from mrl.eval.cache import load_embeddings, save_embeddings

    rng = np.random.default_rng(0)
    arrays = {
        "train_x": rng.standard_normal((300, 16)).astype(np.float32),
        "train_y": rng.integers(0, 5, 300),
        "test_x": rng.standard_normal((40, 16)).astype(np.float32),
        "test_y": rng.integers(0, 5, 40),
    }
    cache = tmp_path / "embeddings"
    save_embeddings(cache, arrays, {"ckpt": "x"})
    assert sorted(p.name for p in cache.iterdir()) == sorted(
        [f"{k}.npy" for k in arrays] + ["meta.json"]
    )
    mapped = load_embeddings(cache, mmap=True)
    for k, v in arrays.items():
        assert isinstance(mapped[k], np.memmap), k
        np.testing.assert_array_equal(mapped[k], v)
    mapped["train_x"][0, 0] = 123.0  # copy-on-write: the file is not changed
    assert load_embeddings(cache)["train_x"][0, 0] == arrays["train_x"][0, 0]
    squeezed = tmp_path / "small.npz"
    np.savez_compressed(squeezed, **arrays)
    np.testing.assert_array_equal(load_embeddings(squeezed)["test_x"], arrays["test_x"])
    np.save(cache / "train_x.npy", np.array([object()], dtype=object), allow_pickle=True)
    with pytest.raises(MRLError, match="unreadable"):
        load_embeddings(cache, mmap=True)


def test_slimmable_runs_through_the_shared_trainer_and_resumes(tmp_path, monkeypatch):
    """objective=slimmable: the same trainer, atomic last.ckpt and ckpt_path=last as MRL runs;
    killed after epoch 1 and resumed, it ends with the uninterrupted run's metrics."""
    args = (
        "objective=slimmable",
        "objective.base_width=16",
        "data.batch_size=16",
        "data.val_size=16",
        "data.test_subset=32",
        "data.subset=48",
        "trainer.max_epochs=2",
        "logger=csv",
        "~callbacks.rich_progress_bar",
    )
    train(compose_cfg("train", tmp_path / "a", *args))
    a = _json(tmp_path / "a" / "metrics.json")
    run = _json(tmp_path / "a" / "run.json")
    # read at every prefix of the 128-d full width (mrl.dims=auto), plus each width whole
    assert run["method"] == "Slim. Net" and run["dims"] == [8, 16, 32, 64, 128]
    assert {f"test/subnet_top1@d{m}" for m in (32, 64, 96, 128)} <= set(a)  # 8 x base width
    assert {f"test/top1@d{m}" for m in run["dims"]} <= set(a)
    assert isinstance(
        build_trainer(compose_cfg("train", tmp_path / "t", *args), [], []).strategy.checkpoint_io,
        AtomicCheckpointIO,
    )

    _die_after_first_epoch(monkeypatch)
    with pytest.raises(_Killed):
        train(compose_cfg("train", tmp_path / "c", *args))
    monkeypatch.undo()
    assert _json(tmp_path / "c" / "run.json")["status"] == "failed"
    train(compose_cfg("train", tmp_path / "c", *args, "ckpt_path=last"))
    run = _json(tmp_path / "c" / "run.json")
    assert run["status"] == "completed" and run["resumes"] == 1
    assert run["resumed_from"]["global_step"] == 3 and run["global_step"] == 6
    assert _json(tmp_path / "c" / "metrics.json") == a


def test_embedding_cache_key_names_every_sample_deciding_option(tmp_path):
    """The cache (keyed by ``repr(dm)``) is not reused for other samples: a different subset,
    test subset, validation size, seed, class split or imbalance changes the key; the batch
    size (which does not change eval-mode embeddings) does not."""
    from mrl.data import FashionMNISTDataModule

    base = dict(subset=500, test_subset=300, val_size=100, seed=0, batch_size=64)
    key = repr(FashionMNISTDataModule(**base))
    for change in (
        {"subset": 600},
        {"test_subset": None},
        {"val_size": 200},
        {"seed": 1},
        {"train_classes": [0, 1, 2, 3, 4]},
        {"imbalance_ratio": 10},
        {"root": str(tmp_path)},
    ):
        assert repr(FashionMNISTDataModule(**{**base, **change})) != key, change
    assert repr(FashionMNISTDataModule(**{**base, "batch_size": 32})) == key
