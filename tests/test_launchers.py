"""Sweeps through submitit: the local executor runs each job in its own process, as SLURM does."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mrl_test_utils import ROOT, run_cli, wait_for_file

TINY = [
    "data.batch_size=8",
    "data.subset=64",
    "data.val_size=16",
    "trainer.limit_train_batches=2",
    "trainer.limit_val_batches=1",
    "trainer.limit_test_batches=1",
    "logger=csv",
]


@pytest.mark.multiprocess
def test_submitit_local_sweep_two_jobs(tmp_path):
    r = run_cli(
        str(ROOT / "train.py"),
        "-m",
        "hydra/launcher=submitit_local",
        "seed=0,1",
        *TINY,
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    (sweep,) = (tmp_path / "logs" / "train" / "multiruns").iterdir()
    rows = json.loads((sweep / "sweep_summary.json").read_text())
    assert [(r["job"], r["status"]) for r in rows] == [(0, "completed"), (1, "completed")]
    seeds = [json.loads((sweep / str(j) / "run.json").read_text())["seed"] for j in (0, 1)]
    assert seeds == [0, 1]
    for j in (0, 1):  # each job ran in its own submitit process, with its own log
        assert (sweep / str(j) / "checkpoints" / "last.ckpt").is_file()
        assert (
            rows[j]["value"]
            == json.loads((sweep / str(j) / "metrics.json").read_text())["val/top1"]
        )
    assert list((sweep / ".submitit").glob("*/*_log.out"))


def test_slurm_launcher_without_slurm_is_one_line(tmp_path):
    r = run_cli(str(ROOT / "train.py"), "-m", "hydra/launcher=slurm", "seed=0,1", cwd=tmp_path)
    assert r.returncode == 2, r.stderr[-2000:]
    assert r.stderr.strip().splitlines() == [
        'error: the submitit launcher failed: Could not detect "srun", are you indeed on a slurm '
        "cluster?; on a machine without SLURM try the sweep with hydra/launcher=submitit_local"
    ]


def test_optuna_search_two_trials_on_a_validation_metric(tmp_path):
    r = run_cli(
        str(ROOT / "train.py"),
        "hparams_search=mrl_optuna",
        "hydra.sweeper.n_trials=2",
        "hydra.sweeper.sampler.n_startup_trials=2",
        *TINY,
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    (sweep,) = (tmp_path / "logs" / "train" / "multiruns").iterdir()
    rows = json.loads((sweep / "sweep_summary.json").read_text())
    assert [(row["job"], row["status"], row["metric"]) for row in rows] == [
        (0, "completed", "val/top1"),
        (1, "completed", "val/top1"),
    ]
    lrs = set()
    for row in rows:
        job = sweep / str(row["job"])
        assert row["value"] == json.loads((job / "metrics.json").read_text())["val/top1"]
        params = dict(o.split("=", 1) for o in row["overrides"])
        lrs.add(params["optim.lr"])
        assert 0.01 <= float(params["optim.lr"]) <= 0.5
        # the sampled importance of the smallest prefix reached the loss
        ckpt = torch.load(job / "checkpoints" / "last.ckpt", weights_only=True)
        assert ckpt["hyper_parameters"]["weights"] == {"8": float(params["mrl.weights.8"])}
        assert float(params["mrl.weights.8"]) != 1.0
    assert len(lrs) == 2  # two different trials
    best = max(row["value"] for row in rows)
    assert f"Best value: {best}" in r.stdout + r.stderr


def _submitit_task_pid(folder) -> int | None:
    """The pid of the submitit task process (``python -m submitit.core._submit``) under folder."""
    for proc in Path("/proc").iterdir():
        try:
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if "submitit.core._submit" in cmd and str(folder) in cmd:
            return int(proc.name)
    return None


@pytest.mark.multiprocess
def test_submitit_local_preemption_checkpoints_requeues_and_resumes(tmp_path):
    """SIGUSR2 (what SLURM sends before pre-empting or timing out a submitit job) mid-training:
    last.ckpt is written at the end of that step, submitit requeues the job, and with
    ckpt_path=auto the requeued job resumes from that step and completes."""
    args = [
        str(ROOT / "train.py"),
        "-m",
        "hydra/launcher=submitit_local",
        "ckpt_path=auto",
        "data.batch_size=32",
        "data.subset=256",  # 8 steps per epoch
        "data.val_size=32",
        "data.test_subset=64",
        "trainer.max_epochs=3",
        "callbacks.last_checkpoint.every_n_train_steps=2",
        "logger=csv",
    ]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with open(tmp_path / "sweep.log", "w") as log:
        proc = subprocess.Popen(
            [sys.executable, *args], cwd=tmp_path, env=env, stdout=log, stderr=log
        )
        try:
            last = "logs/train/multiruns/*/0/checkpoints/last.ckpt"
            wait_for_file(proc, last, tmp_path, tmp_path / "sweep.log", timeout=300)
            pid = _submitit_task_pid(tmp_path)
            assert pid is not None
            os.kill(pid, signal.SIGUSR2)
            assert proc.wait(timeout=400) == 0, (tmp_path / "sweep.log").read_text()[-3000:]
        finally:
            if proc.poll() is None:
                proc.kill()
    (sweep,) = (tmp_path / "logs" / "train" / "multiruns").iterdir()
    run = json.loads((sweep / "0" / "run.json").read_text())
    assert run["status"] == "completed" and run["resumes"] == 1 and run["global_step"] == 24
    assert 2 <= run["resumed_from"]["global_step"] < 24
    logs = "".join(p.read_text() for p in (sweep / ".submitit").glob("*/*_log.*"))
    assert (
        "Requeued job" in logs
        and f"pre-empted at step {run['resumed_from']['global_step']}" in logs
    )
    rows = json.loads((sweep / "sweep_summary.json").read_text())
    assert [(r["job"], r["status"]) for r in rows] == [(0, "completed")]
