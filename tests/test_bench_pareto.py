"""The funnel Pareto bench (python -m scripts.bench.pareto) end to end at a tiny size: every
configuration is measured against exact search, the tables and JSON agree, and a rerun of a
dataset replaces its rows. Checks the bench's code, not its numbers (tiny timings mean
nothing)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from scripts.bench.pareto import configs  # noqa: E402


def test_configs_keep_the_memory_budget_at_every_width():
    """A small-prefix rerank store is kept only where it costs <= 1/16 of the full width."""
    wide, narrow = configs(1_000_000, 2048), configs(55_000, 512)
    assert "ivf_int8_ds128_dc64_K200_r128_K30" in wide
    assert "ivf_int8_ds128_dc64_K200" in narrow and len(wide) == len(narrow)
    for table, width in ((wide, 2048), (narrow, 512)):
        for name, stages in table.items():
            assert stages[-1] == {"dim": width, "keep": 10}, name
            for mid in stages[1:-1]:
                assert 16 * mid["dim"] <= width and f"_r{mid['dim']}_K{mid['keep']}" in name


def test_pareto_bench_runs_and_its_table_matches_its_rows(tmp_path):
    out, md, png = tmp_path / "bench.json", tmp_path / "pareto.md", tmp_path / "pareto.png"
    env = {**os.environ, "MRL_BENCH_CACHE": str(tmp_path / "cache"), "MRL_BENCH_THREADS": "1"}
    cmd = [sys.executable, "-m", "scripts.bench.pareto", "--n", "3000", "--dim", "256",
           "--queries", "40", "--reps", "1", "--skip-fmnist",
           "--out", str(out), "--md", str(md), "--png", str(png)]  # fmt: skip
    # a stale row of a configuration that no longer exists, for the same dataset
    out.write_text(json.dumps([{"name": "pareto/synthetic_3k/gone_speedup", "group": "pareto",
                                "flat": True, "dataset": "synthetic_3k", "config": "gone",
                                "value": 99.0}]))  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = {r["name"]: r for r in json.loads(out.read_text())}
    names = configs(3000, 256)
    got = {
        r["config"]: r for r in rows.values() if r.get("dataset") == "synthetic_3k" and "flat" in r
    }
    assert set(names) <= set(got), set(names) - set(got)
    text = md.read_text()
    assert "gone" not in text  # a dataset measured in full drops its older rows
    assert png.stat().st_size > 0
    for name, r in got.items():
        if name not in names:
            continue
        assert 0 <= r["mAP10"] <= 100 and 0 <= r["recall10"] <= 1
        assert abs(r["gap_points"] - (r["exact_mAP10"] - r["mAP10"])) < 1e-9
        assert r["bytes_vs_float32"] * 4 * 256 == r["bytes_per_vector"]
        assert r["value"] > 0 and f"| {name} |" in text
    # the summary names the fastest configuration within 0.5 points of exact mAP@10
    summary = rows["pareto/synthetic_3k/best_speedup_within_0.5pts"]
    ok = [r for c, r in got.items() if c != "gone" and r["gap_points"] <= 0.5]
    best = max(ok, key=lambda r: r["value"])
    assert (summary["config"], summary["value"]) == (best["config"], best["value"])
