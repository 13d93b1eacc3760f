"""The benchmarks (python -m scripts.bench) run end to end at tiny sizes and writes well-formed JSON.

These check the benchmark *code*, not the numbers (timings at tiny sizes mean nothing).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / "scripts"
sys.path.insert(0, str(ROOT))

from scripts.bench import common as bench_common  # noqa: E402
from scripts.bench import runner as bench  # noqa: E402


@pytest.fixture
def bench_env(tmp_path, monkeypatch):
    """In-process runs: own cache, 1 thread, and torch's thread count restored afterwards."""
    import torch

    monkeypatch.setenv("MRL_BENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("MRL_BENCH_THREADS", "1")  # bench.main sets it: restored at teardown
    n = torch.get_num_threads()
    yield tmp_path
    torch.set_num_threads(n)


FMNIST = Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")


def _run(tmp_path: Path, *args: str, timeout: int = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "MRL_BENCH_CACHE": str(tmp_path / "cache"), "PYTHONUNBUFFERED": "1"}
    return subprocess.run(
        [sys.executable, "-m", "scripts.bench", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _check_rows(rows):
    assert isinstance(rows, list) and rows
    for r in rows:
        assert isinstance(r["name"], str) and r["name"]
        assert r["value"] is None or isinstance(r["value"], int | float)
        assert isinstance(r["target"], str)
        assert isinstance(r["met"], bool)
        assert r["verdict"] in ("met", "not met", "undecided")
        if r.get("low") is not None:
            assert r["low"] <= r["high"]
        if r["value"] is not None:
            assert r["target"].split()[0] in ("<=", ">=", "|x|")


@pytest.mark.skipif(not FMNIST.is_file(), reason="needs the embedded Fashion-MNIST")
def test_smoke_all_groups_write_json(bench_env, capsys):
    # in-process (one interpreter start instead of three); the worker subprocess path is
    # covered by test_worker_subprocess_has_its_own_peak_rss
    out = bench_env / "bench.json"
    assert bench.main(["--smoke", "--in-process", "--out", str(out)]) == 0
    stdout = capsys.readouterr().out
    rows = json.loads(out.read_text())
    _check_rows(rows)
    assert not [r for r in rows if "error" in r]
    names = {r["name"] for r in rows}
    for prefix in (
        "train_step/resnet18",
        "train_step/resnet18_32px",
        "heads/mrl_e_one_pass_fwd_speedup",
        "eval/all_prefixes_vs_largest",
        "eval/fmnist_end_to_end_all_vs_largest",
        "adaptive_ret/5k_flat_speedup",
        "adaptive_ret/5k_hnsw_speedup",
        "peak_rss/adaptive_5k_gb",
        "adaptive_ret/fmnist_map10_gap_points",
        "input_pipeline/loader_vs_train_step",
        "peak_rss/train_default_gb",
    ):
        assert any(n.startswith(prefix) for n in names), (prefix, names)
    # timed ratios carry their interval
    timed = [r for r in rows if r["name"].startswith(("train_step/", "heads/", "eval/all"))]
    assert timed and all(r["low"] is not None and r["high"] is not None for r in timed)
    # one table with the five columns, every row in it
    header = next(line for line in stdout.splitlines() if line.startswith("name"))
    assert header.split() == ["name", "value", "interval(95%)", "target", "verdict"]
    for n in names:
        assert n in stdout


def test_worker_subprocess_has_its_own_peak_rss(tmp_path):
    out = tmp_path / "bench.json"
    proc = _run(tmp_path, "--smoke", "--only", "adaptive_1m", "--out", str(out))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = json.loads(out.read_text())
    _check_rows(rows)
    rss = [r for r in rows if r["name"].startswith("peak_rss/")]
    assert len(rss) == 1 and 0.05 < rss[0]["value"] < 4, rss
    assert "IN-PROCESS" not in rss[0]["note"]


def test_only_some_groups_in_process(bench_env, capsys):
    out = bench_env / "b.json"
    assert bench.main(["--smoke", "--only", "hea", "eval", "--out", str(out)]) == 0
    assert "name" in capsys.readouterr().out
    rows = json.loads(out.read_text())
    _check_rows(rows)
    assert {r["group"] for r in rows} == {"heads", "eval"}
    assert all(r["scale"] == "smoke" for r in rows)


def test_unknown_only_name_is_refused():
    with pytest.raises(SystemExit, match="no such benchmark"):
        bench.select(["nope"], gpu=False)
    assert bench.select(["train"], gpu=False) == ["train_resnet18", "train_resnet50"]
    assert bench.select(None, gpu=True) == ["gpu"]


def test_row_targets_and_table():
    r = bench_common.row("a", 1.01, "<=", 1.02)
    assert r["met"] and r["target"] == "<= 1.02"
    assert not bench_common.row("b", 0.9, ">=", 1.0)["met"]
    assert bench_common.row("c", -0.3, "|x| <=", 0.5)["met"]
    assert not bench_common.row("d", None, ">=", 1.0)["met"]
    err = bench_common.error_row("e", ValueError("boom"))
    text = bench.table([r, err])
    assert "a" in text and "error" in text
    assert text.splitlines()[0].split() == ["name", "value", "interval(95%)", "target", "verdict"]


def test_intervals_decide_verdicts_and_straddling_is_undecided():
    v = bench_common.verdict
    assert v(1.01, "<=", 1.02, 0.99, 1.015) == "met"
    assert v(1.01, "<=", 1.02, 0.95, 1.08) == "undecided"  # was "met" on the point estimate
    assert v(1.10, "<=", 1.02, 1.05, 1.15) == "not met"
    assert v(15.0, ">=", 14.0, 13.0, 16.0) == "undecided"
    assert v(15.0, ">=", 14.0, 14.5, 16.0) == "met"
    assert v(0.2, "|x| <=", 0.5, -0.1, 0.6) == "undecided"
    assert v(None, ">=", 1.0, None, None) == "not met"
    assert v(1.5, ">=", 1.0, None, None) == "met"  # no interval: the value decides
    rng = np.random.default_rng(0)
    base = rng.uniform(1.0, 1.3, 15)  # load drift shared by both sides of a round
    num, den = 2.0 * base * rng.normal(1, 0.01, 15), base * rng.normal(1, 0.01, 15)
    low, high = bench_common.ratio_interval(list(num), list(den))
    assert low < 2.0 < high and high - low < 0.1  # pairing removes the shared drift
    noisy = bench_common.row(
        "t", 1.0, "<=", 1.02, interval_of=(list(1 + 0.1 * rng.standard_normal(9)), [1.0] * 9)
    )
    assert noisy["low"] < 1.0 < noisy["high"] and noisy["verdict"] == "undecided"


def test_interleaved_order_and_medians():
    calls = []
    times = bench_common.interleaved(
        {"A": lambda: calls.append("A"), "B": lambda: calls.append("B")}, reps=2, warmup=1
    )
    assert calls == ["A", "B"] * 3
    assert [len(v) for v in times.values()] == [2, 2]


def test_synthetic_is_deterministic_and_matryoshka_like():
    s = bench_common.Synthetic(64, 5, seed=3)
    x1, y1 = s.chunk(200, 7)
    x2, y2 = s.chunk(200, 7)
    assert (x1 == x2).all() and (y1 == y2).all()
    var = x1.var(axis=0)
    assert var[:8].mean() > var[-8:].mean()  # energy decays with the index


def test_npy_chunks_round_trip(tmp_path):
    import numpy as np

    from scripts.bench import retrieval as bench_retrieval

    s = bench_common.Synthetic(16, 3)
    path = tmp_path / "db.npy"
    labels = bench_retrieval.write_database(path, s, 1234)
    arr = np.load(path)
    assert arr.shape == (1234, 16) and len(labels) == 1234
    got = np.concatenate([x for _, x in bench_retrieval.read_chunks(path, chunk=500)])
    np.testing.assert_array_equal(got, arr)


def test_gpu_bench_script_exits_cleanly_without_gpu(tmp_path):
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("a GPU is present: the script would run the real 8-minute benchmark")
    env = {**os.environ, "OUT": str(tmp_path)}
    proc = subprocess.run(
        ["bash", str(SCRIPTS / "gpu_bench.sh")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert "skipping" in proc.stdout or "nothing to run" in proc.stdout


def test_fashion_mnist_rows_pick_a_trained_model(tmp_path):
    from scripts.bench import retrieval

    def run(name: str, mtime: float, **rec) -> Path:
        d = tmp_path / name
        (d / "checkpoints").mkdir(parents=True)
        base = dict(task="train", status="completed", method="MRL", model="resnet18")
        (d / "run.json").write_text(json.dumps({**base, "data": "fashion_mnist", **rec}))
        ckpt = d / "checkpoints" / "last.ckpt"
        ckpt.write_bytes(b"x")
        os.utime(ckpt, (mtime, mtime))
        return ckpt

    old = run("old", 1000)
    new = run("new", 2000)
    run("newer_but_ff", 3000, method="FF-512")
    run("newer_but_failed", 4000, status="failed")
    assert retrieval.newest_default_run(tmp_path) == new != old
    assert retrieval.newest_default_run(tmp_path / "none") is None
    assert retrieval.bench_fmnist_ckpt("given.ckpt", "full") == (
        "given.ckpt",
        "given with --fmnist-ckpt",
    )
    assert retrieval.bench_fmnist_ckpt(None, "smoke")[0] is None
