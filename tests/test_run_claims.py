"""A command's hold on its run dir (``mrl.run.claim``): nothing of a finished run is lost.

* every refused command leaves the run dir byte-identical (names, bytes and mtimes);
* ``eval.py`` into a training run dir keeps the training's ``.hydra/`` and ``run.json``;
* a resume never mixes metrics of two runs in ``metrics.json``;
* a second process in a locked run dir gets one line;
* SIGTERM exits 143 with one line, keeps ``last.ckpt`` and the run resumes;
* result files get the umask's mode, not mkstemp's 0600;
* images dropped by ``data.skip_corrupt`` are named in the run record.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from mrl.core.errors import MRLError
from mrl.run.claim import RunDirClaim
from mrl.run.files import write_text_atomic
from mrl_test_utils import ROOT, run_cli, run_cli_cases, wait_for_file

pytestmark = pytest.mark.slow

TINY = (
    "model=timm",
    "model.name=test_efficientnet",  # 256 wide
    "data.batch_size=16",
    "data.val_size=16",
    "data.test_subset=32",
    "~callbacks.rich_progress_bar",
    "logger=csv",
)
ENV = {"WANDB_MODE": "offline", "WANDB_SILENT": "true"}


def snapshot(root: Path) -> dict[str, tuple[str, int]]:
    """Every file under ``root``: relative path -> (md5 of its bytes, mtime in ns)."""
    return {
        str(p.relative_to(root)): (hashlib.md5(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _json(path: Path) -> dict:
    return json.loads(path.read_text())


def test_refused_commands_leave_a_finished_run_byte_identical_and_eval_keeps_its_files(tmp_path):
    out = tmp_path / "run"
    train = [*TINY, "data.subset=48", "trainer.max_epochs=1", "mrl.efficient=true"]
    here = f"hydra.run.dir={out}"
    first = run_cli_cases([("train", "train.py", [*train, here], ENV)], tmp_path / "a")["train"]
    assert first["code"] == 0, first["stderr"][-2000:]
    assert _json(out / "run.json")["status"] == "completed"
    before = snapshot(out)
    assert ".hydra/config.yaml" in before and "train.log" in before

    ckpt = str(out / "checkpoints" / "last.ckpt")
    refused = {  # name: (script, extra args, what the one line says)
        "rerun": ("train.py", [], "already holds last.ckpt"),
        "auto, another config": (  # a finished run stands only for the config it was made by
            "train.py",
            ["ckpt_path=auto", "optim.weight_decay=0.123"],
            "was completed with another config (optim.weight_decay (0.0005 then, 0.123 now))",
        ),
        "other dims (MRL-E)": (
            "train.py",
            ["ckpt_path=last", "mrl.dims=[32,64,...,256]"],
            "mrl.dims [8, 16, 32, 64, 128, 256] in the checkpoint vs [32, 64, 128, 256] now",
        ),
        "other model": ("train.py", ["ckpt_path=last", "model.name=resnet18"], "model.name"),
        "bad optimiser value": ("train.py", ["ckpt_path=last", "optim.momentum=-0.5"], "momentum"),
        "bad trainer value": ("train.py", ["ckpt_path=last", "trainer.max_epochs=0"], "max_epochs"),
        "unknown data": ("train.py", ["ckpt_path=last", "data=nope"], "nope"),
        "eval bad device": ("eval.py", [f"ckpt_path={ckpt}", "device=tpu"], "device='tpu'"),
    }
    cases = [
        (name, script, [*(train if script == "train.py" else []), *extra, here], ENV)
        for name, (script, extra, _) in refused.items()
    ]
    cases.append(("auto reuses", "train.py", [*train, "ckpt_path=auto", here], ENV))
    results = run_cli_cases(cases, tmp_path / "b")
    for name, (_, _, says) in refused.items():
        r = results[name]
        assert r["code"] == 2, (name, r["stderr"][-2000:])
        line = r["stderr"].strip().splitlines()[-1]
        assert line.startswith("error: ") and says in line, (name, line)
    assert results["auto reuses"]["code"] == 0
    assert "already completed" in results["auto reuses"]["stdout"]
    assert snapshot(out) == before  # nothing was written, moved or touched

    # eval.py into the training run dir: its own record and config, the training's kept
    train_cfg = (out / ".hydra" / "config.yaml").read_bytes()
    trained = _json(out / "metrics.json")
    cases = [
        ("eval", "eval.py", [f"ckpt_path={ckpt}", here, "eval=[knn]"], ENV),
        ("resume", "train.py", [*train, "ckpt_path=last", here], ENV),
    ]
    results = run_cli_cases(cases, tmp_path / "c", timeout=600)
    assert results["eval"]["code"] == 0, results["eval"]["stderr"][-2000:]
    assert results["resume"]["code"] == 0, results["resume"]["stderr"][-2000:]
    assert (out / ".hydra" / "config.yaml").read_bytes() == train_cfg
    evaluated = _json(out / "metrics.previous-1.json")  # moved aside by the resume
    assert evaluated == {**trained, **{k: v for k, v in evaluated.items() if k.startswith("knn")}}
    assert any(k.startswith("knn/") for k in evaluated)
    assert _json(out / "eval.json")["task"] == "eval"
    assert _json(out / "eval.json")["status"] == "completed"
    assert "eval=[knn]" in (out / ".hydra" / "eval-1" / "overrides.yaml").read_text()
    assert "ckpt_path=last" in (out / ".hydra" / "train-1" / "overrides.yaml").read_text()
    assert "ckpt_path" not in (out / ".hydra" / "overrides.yaml").read_text()
    run = _json(out / "run.json")
    assert run["task"] == "train" and run["status"] == "completed" and run["resumes"] == 1
    assert run["previous_metrics"] == "metrics.previous-1.json"
    now = _json(out / "metrics.json")  # the resumed run's own metrics only: no stale knn keys
    assert "test/top1" in now and not any(k.startswith("knn/") for k in now)


def test_a_second_process_in_a_locked_run_dir_gets_one_line(tmp_path):
    out = tmp_path / "run"
    with RunDirClaim(out, "train"):
        with pytest.raises(MRLError, match="in use by another process"):
            with RunDirClaim(out, "eval"):
                pass
        r = run_cli("train.py", *TINY, "data.subset=32", f"hydra.run.dir={out}", env=ENV)
        assert r.returncode == 2, r.stderr[-2000:]
        assert r.stderr.strip().splitlines()[-1].startswith(f"error: run dir {out} is in use")
        assert snapshot(out) == {}  # the refused process wrote nothing
    with RunDirClaim(out, "train") as claim:  # released when the holder ends
        assert claim.fresh and claim.record_path == out / "run.json"


def test_child_ranks_do_not_lock_or_write(tmp_path, monkeypatch):
    out = tmp_path / "run"
    with RunDirClaim(out, "train"):
        monkeypatch.setenv("LOCAL_RANK", "1")
        with RunDirClaim(out, "train") as child:
            assert child.child and child.commit(None) is None


def test_sigterm_exits_143_keeps_last_ckpt_and_resumes(tmp_path):
    out = tmp_path / "run"
    args = [
        "train.py",
        *TINY,
        "data.subset=96",  # 6 steps per epoch
        "trainer.max_epochs=2",
        "callbacks.last_checkpoint.every_n_train_steps=2",
        f"hydra.run.dir={out}",
    ]
    log = tmp_path / "first.log"
    with open(log, "w") as f:
        proc = subprocess.Popen(
            [sys.executable, *args],
            cwd=ROOT,
            env={**os.environ, **ENV},
            stdout=subprocess.DEVNULL,
            stderr=f,
        )
        try:
            wait_for_file(proc, "checkpoints/last.ckpt", out, log)
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=300) == 143, log.read_text()[-2000:]
        finally:
            if proc.poll() is None:
                proc.kill()
    line = log.read_text().strip().splitlines()[-1]
    assert line.startswith("error: terminated by SIGTERM while training at step "), line
    assert "resume with ckpt_path=last" in line
    run = _json(out / "run.json")
    assert run["status"] == "interrupted" and "SIGTERM" in run["error"]
    stopped = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)["global_step"]
    assert 2 <= stopped < 12
    assert not (out / "metrics.json").exists()

    r = run_cli(*args, "ckpt_path=last", env=ENV)
    assert r.returncode == 0, r.stderr[-2000:]
    run = _json(out / "run.json")
    assert run["status"] == "completed" and run["global_step"] == 12
    assert run["resumed_from"]["global_step"] == stopped
    assert "test/top1" in _json(out / "metrics.json")


def test_result_files_follow_the_umask(tmp_path):
    from mrl.run.checkpoints import atomic_torch_save

    old = os.umask(0o027)
    try:
        text = write_text_atomic(tmp_path / "metrics.json", "{}")
        ckpt = atomic_torch_save({"a": torch.zeros(1)}, tmp_path / "last.ckpt")
    finally:
        os.umask(old)
    assert text.stat().st_mode & 0o777 == 0o640
    assert ckpt.stat().st_mode & 0o777 == 0o640


def test_skipped_corrupt_images_are_named_in_the_run_record(tmp_path):
    from PIL import Image

    from mrl.tasks.train import train
    from mrl_test_utils import compose_cfg

    rng = np.random.default_rng(0)
    for c in ("a", "b"):
        (tmp_path / "imgs" / c).mkdir(parents=True)
        for i in range(8):
            arr = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
            Image.fromarray(arr).save(tmp_path / "imgs" / c / f"{i}.png")
    bad = tmp_path / "imgs" / "a" / "9.png"
    bad.write_bytes(b"not a png")
    cfg = compose_cfg(
        "train",
        tmp_path / "run",
        *[a for a in TINY if not a.startswith("data.")],
        "data=imagefolder",
        f"data.root={tmp_path / 'imgs'}",
        "data.img_size=16",
        "data.batch_size=4",
        "data.num_workers=0",
        "data.skip_corrupt=true",
        "+data.split=[0.5,0.25,0.25]",
        "trainer.max_epochs=1",
    )
    train(cfg)
    record = _json(tmp_path / "run" / "run.json")
    assert record["status"] == "completed"
    assert record["skipped_images"] == 1 and record["skipped_files"] == [str(bad)]


def test_config_changes_name_every_differing_leaf():
    """Dotted keys in key order, absent keys said so, ignored top-level keys skipped, lists
    compared whole; the recorded config reads back as Hydra wrote it."""
    from mrl.run.claim import config_changes

    made = {"ckpt_path": None, "optim": {"lr": 0.1, "wd": 0.0005}, "mrl": {"dims": [8, 16]}}
    now = {"ckpt_path": "auto", "optim": {"lr": 0.1, "wd": 0.001}, "mrl": {"dims": [8, 32]}}
    now["objective"] = {"bias_init": "prior"}
    assert config_changes(made, now, ignore=("ckpt_path",)) == [
        "mrl.dims ([8, 16] then, [8, 32] now)",
        "objective (absent then, {'bias_init': 'prior'} now)",
        "optim.wd (0.0005 then, 0.001 now)",
    ]
    assert config_changes(made, made) == []
    assert config_changes(made, {**made, "ckpt_path": "auto"}) == [
        "ckpt_path (None then, 'auto' now)"
    ]
