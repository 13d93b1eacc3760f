"""``scripts/reproduce_align.py`` (#14 item 7, the ALIGN row) at small sizes: real MRL, FF-8
and FF-256 dual encoders trained 2 steps each on Fashion-MNIST captions, the CSV checked against
each run's metrics.json (PCA of FF-256 included), resumption (reuse; refusal of a run made under another config) and a
bad ``--ff-dims``."""

from __future__ import annotations

import csv
import json
import os
import sys

import pytest

from mrl_test_utils import ROOT, run_cli

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(ROOT / "scripts"))

import reproduce_align as ra  # noqa: E402

SCRIPT = "scripts/reproduce_align.py"
SMALL = [
    "data.subset=192",
    "data.val_size=64",
    "data.test_subset=128",
    "data.batch_size=32",
    "model.channels=[16,32,64,128]",
    "trainer.limit_train_batches=2",
]


@pytest.mark.slow
def test_align_grid_small_resumed_and_stale_runs_refused(tmp_path):
    args = [SCRIPT, "--out", str(tmp_path)]  # the default --ff-dims: 8,256
    r = run_cli(*args, "--", *SMALL, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    runs = tmp_path / "runs" / ra.EXPERIMENT
    with open(tmp_path / f"{ra.EXPERIMENT}.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == list(ra.COLUMNS)
    cells = {(x["method"], x["task"], x["metric"], int(x["dim"])): float(x["value"]) for x in rows}
    metrics = {
        name: json.loads((runs / f"{name}_s0" / "metrics.json").read_text())
        for name in ("mrl", "ff8", "ff256")
    }
    want = {}
    for (task, metric), key in ra.METRICS.items():
        for m in ra.DIMS:
            want[("MRL", task, metric, m)] = metrics["mrl"][f"test/{key}@d{m}"]
            want[(ra.FF_TRUNC, task, metric, m)] = metrics["ff256"][f"test/{key}@d{m}"]
            pca = metrics["ff256"].get(f"test/{key}@d{m}/pca")
            if m <= 128:  # PCA of FF-256 fitted on the 128..192 training images: <= that many
                want[(ra.PCA, task, metric, m)] = pca
            else:
                assert pca is None, (key, m)
        want[("FF", task, metric, 8)] = metrics["ff8"][f"test/{key}@d8"]
        want[("FF", task, metric, 256)] = metrics["ff256"][f"test/{key}@d256"]
    assert set(cells) == set(want)
    for key, v in want.items():
        assert cells[key] == pytest.approx(100 * v, abs=0.006), key
    for name in ("mrl", "ff8", "ff256"):
        run = json.loads((runs / f"{name}_s0" / "run.json").read_text())
        assert run["global_step"] == 2
        assert run["method"] == {"mrl": "MRL", "ff8": "FF-8", "ff256": "FF-256"}[name]
    md = (tmp_path / f"{ra.EXPERIMENT}.md").read_text()
    assert "## i2t R@1" in md and "FF (truncated) = the first m dims of FF-256" in md
    assert "PCA = the top m principal components of FF-256's embeddings" in md
    assert "| dim | MRL | FF | FF (truncated) | PCA |" in md
    assert "pca" not in (runs / "mrl_s0" / "metrics.json").read_text()  # FF-256's only

    # rerun: every run reused, the CSV unchanged
    before = (tmp_path / f"{ra.EXPERIMENT}.csv").read_text()
    again = run_cli(*args, "--", *SMALL, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.count("== reusing") == 3
    assert (tmp_path / f"{ra.EXPERIMENT}.csv").read_text() == before

    # the same overrides, but FF-8 was made when a default differed (as if the experiment's
    # text tower had learned at another rate): refused by name, its files left as they were
    recorded = runs / "ff8_s0" / ".hydra" / "config.yaml"
    text = recorded.read_text()
    assert "text_lr_scale: 0.02\n" in text
    recorded.write_text(text.replace("text_lr_scale: 0.02\n", "text_lr_scale: 1.0\n"))
    ckpt = (runs / "ff8_s0" / "checkpoints" / "last.ckpt").read_bytes()
    stale = run_cli(*args, "--", *SMALL, timeout=600)
    assert stale.returncode == 1
    assert (
        "ff8_s0 was made with another configuration: objective.text_lr_scale (1.0 then, 0.02 "
        "now); remove it or use another --out" in stale.stderr
    )
    assert (runs / "ff8_s0" / "checkpoints" / "last.ckpt").read_bytes() == ckpt
    assert stale.stdout.count("== reusing") == 2  # MRL and FF-256

    bad = run_cli(SCRIPT, "--out", str(tmp_path), "--ff-dims", "8,300", timeout=120)
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines()[-1] == (
        "error: --ff-dims has [300]; use dims of [8, 16, 32, 64, 128, 256]"
    )
