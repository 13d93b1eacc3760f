"""Packaged commands: mrl-train, mrl-eval and python -m mrl work from any folder, with the
configs shipped inside the package and --config-dir for a user's own groups."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import numpy as np

from mrl_test_utils import ROOT, run_cli

BIN = Path(sys.executable).parent


def test_mrl_train_outside_the_checkout_with_a_users_config_dir(tmp_path):
    (tmp_path / "myconf" / "experiment").mkdir(parents=True)
    (tmp_path / "myconf" / "experiment" / "tiny.yaml").write_text(
        textwrap.dedent(
            """\
            # @package _global_
            seed: 3
            data: {subset: 96, val_size: 32, test_subset: 32, batch_size: 16}
            trainer: {limit_train_batches: 2, limit_val_batches: 1, limit_test_batches: 1}
            """
        )
    )
    work = tmp_path / "elsewhere"
    work.mkdir()
    r = subprocess.run(
        [str(BIN / "mrl-train"), "--config-dir", str(tmp_path / "myconf"), "experiment=tiny"]
        + ["logger=csv"],
        cwd=work,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    (run,) = (work / "logs" / "train" / "runs").iterdir()
    record = json.loads((run / "run.json").read_text())
    assert record["status"] == "completed" and record["seed"] == 3  # the user's experiment
    assert "test/top1@d512" in json.loads((run / "metrics.json").read_text())


def test_python_m_mrl_eval_and_bad_subcommand(tmp_path):
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((3, 16)) * 4
    y_tr, y_te = rng.integers(0, 3, 200), rng.integers(0, 3, 40)
    x_tr = (centres[y_tr] + rng.standard_normal((200, 16))).astype(np.float32)
    x_te = (centres[y_te] + rng.standard_normal((40, 16))).astype(np.float32)
    np.savez(tmp_path / "e.npz", train_x=x_tr, train_y=y_tr, test_x=x_te, test_y=y_te)
    r = run_cli("-m", "mrl", "eval", "embeddings=e.npz", "eval=[knn]", "logger=csv", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    (run,) = (tmp_path / "logs" / "eval" / "runs").iterdir()
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["knn/top1@d16"] > 0.9  # well-separated clusters
    r = run_cli("-m", "mrl", "fit", cwd=tmp_path)
    assert r.returncode == 2
    assert r.stderr.strip() == "error: python -m mrl takes train, eval or export first, got fit"


def test_wheel_ships_the_configs_and_the_commands(tmp_path):
    r = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q"]
        + ["-w", str(tmp_path), str(ROOT)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    (wheel,) = tmp_path.glob("*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    conf = {n.removeprefix("mrl/conf/") for n in names if n.startswith("mrl/conf/")}
    shipped = {str(p.relative_to(ROOT / "conf")) for p in (ROOT / "conf").rglob("*.yaml")}
    assert conf == shipped and "train.yaml" in conf and "eval/knn.yaml" in conf
    (entry,) = [n for n in names if n.endswith("entry_points.txt")]
    text = zipfile.ZipFile(wheel).read(entry).decode()
    assert "mrl-train = mrl.cli:train_main" in text and "mrl-eval = mrl.cli:eval_main" in text
