"""Two CPU processes (``trainer=ddp_cpu``, ``eval.py devices=2``) give one process's results.

Equality convention: every split is sharded without padding and gathered back in dataset
order, so the embeddings of 2 processes equal those of 1 up to float rounding of the batch
composition (measured on this CPU: bit-identical); metrics are asserted equal to 1e-9.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest

from mrl_test_utils import ROOT, run_cli, wait_for_file

pytestmark = [pytest.mark.slow, pytest.mark.multiprocess]  # make test-multiprocess

TINY = [
    "data.subset=384",
    "data.val_size=128",
    "data.test_subset=256",
    "data.batch_size=32",
    "logger=csv",
]


def _json(path):
    return json.loads(path.read_text())


def _eval(tmp_path, ckpt, devices: int):
    out = tmp_path / f"eval{devices}"
    r = run_cli(
        str(ROOT / "eval.py"),
        f"ckpt_path={ckpt}",
        "eval=[knn,linear]",
        f"devices={devices}",
        "logger=csv",
        f"hydra.run.dir={out}",
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    return out


def test_ddp_cpu_sweep_trains_evaluates_once_and_matches_one_process(tmp_path):
    r = run_cli(
        str(ROOT / "train.py"),
        "-m",
        "trainer=ddp_cpu",
        "seed=0,1",
        "callbacks=eval",
        "eval=[knn,linear]",
        "trainer.max_steps=3",
        *TINY,
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    # the child ranks did not re-run the sweep: one sweep dir, jobs 0 and 1, 2 processes each
    (sweep,) = (tmp_path / "logs" / "train" / "multiruns").iterdir()
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir() and not p.name.startswith(".")) == [
        "0",
        "1",
    ]
    rows = _json(sweep / "sweep_summary.json")
    assert [(row["job"], row["status"]) for row in rows] == [(0, "completed"), (1, "completed")]
    assert (r.stdout + r.stderr).count("Starting with 2 processes") == 4  # fit + test, per job
    job = sweep / "0"
    run = _json(job / "run.json")
    assert run["status"] == "completed" and run["global_step"] == 3
    trained = _json(job / "metrics.json")
    assert "test/top1" in trained and "train/loss@d8" in trained
    # the end-of-training evaluation saw every sample exactly once (gathered on rank 0)
    emb = job / "embeddings"
    assert np.load(emb / "train_x.npy").shape == (384, 512)  # data.subset training images
    assert np.load(emb / "val_x.npy").shape[0] == 128
    assert np.load(emb / "test_x.npy").shape[0] == 256
    assert not list(job.glob("**/*.tmp"))

    ckpt = job / "checkpoints" / "last.ckpt"
    one, two = _eval(tmp_path, ckpt, 1), _eval(tmp_path, ckpt, 2)
    assert _json(two / "run.json")["processes"] == 2
    for name in ("train_x", "val_x", "test_x", "test_y"):
        a, b = (
            np.load(one / "embeddings" / f"{name}.npy"),
            np.load(two / "embeddings" / f"{name}.npy"),
        )
        assert a.shape == b.shape and np.abs(a - b).max() <= 1e-5, name
    m1, m2 = _json(one / "metrics.json"), _json(two / "metrics.json")
    keys = [k for k in m1 if k.startswith(("knn/", "linear/"))]
    assert len(keys) >= 14 and set(keys) <= set(m2)
    assert all(abs(m1[k] - m2[k]) <= 1e-9 for k in keys), {k: (m1[k], m2[k]) for k in keys}
    # ...and equal to what the 2-process training callback measured on the same weights
    assert all(abs(trained[k] - m1[k]) <= 1e-9 for k in keys if k.startswith("knn/"))


def test_ddp_cpu_resume_after_sigkill_and_one_line_errors(tmp_path):
    out = tmp_path / "run"
    args = [
        str(ROOT / "train.py"),
        "trainer=ddp_cpu",
        *TINY,
        "data.subset=64",  # one step per epoch: 32 images per process
        "trainer.max_epochs=6",
        "callbacks.last_checkpoint.every_n_train_steps=1",
        f"hydra.run.dir={out}",
    ]
    with open(tmp_path / "first.log", "w") as log:
        proc = subprocess.Popen(
            [sys.executable, *args],
            cwd=tmp_path,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # kill the launcher and its workers, as a scheduler does
        )
        try:
            wait_for_file(proc, "checkpoints/last.ckpt", out, tmp_path / "first.log")
        finally:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert _json(out / "run.json")["status"] == "running"

    r = run_cli(*args, "ckpt_path=last", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    run = _json(out / "run.json")
    assert run["status"] == "completed" and run["resumes"] == 1
    assert run["global_step"] == 6 and run["epochs"] == 6
    assert 1 <= run["resumed_from"]["global_step"] < 6

    # a loss that diverges inside a worker: one line naming it, non-zero exit, run.json failed
    bad = tmp_path / "nan"
    r = run_cli(
        *[a for a in args if not a.startswith("hydra.run.dir")],
        "optim.lr=1e30",
        f"hydra.run.dir={bad}",
        cwd=tmp_path,
    )
    assert r.returncode != 0
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "non-finite loss" in errors[0], r.stderr[-2000:]
    assert "Traceback" not in r.stderr
    assert _json(bad / "run.json")["status"] == "failed"
