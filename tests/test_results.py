"""The aggregator on synthetic run dirs, including a missing and a failed run."""

from __future__ import annotations

import json

import pytest

from mrl.results import find_runs, read_csv, table1, table2, to_markdown, write_tables

DIMS = [8, 16, 32]


def _run(root, name, method, metrics, status="completed", seed=0, **info):
    d = root / name
    d.mkdir(parents=True)
    record = {"status": status, "method": method, "task": "train", "seed": seed, **info}
    (d / "run.json").write_text(json.dumps(record))
    if metrics is not None:
        (d / "metrics.json").write_text(json.dumps(metrics))
    return d


@pytest.fixture
def runs_root(tmp_path):
    root = tmp_path / "runs"
    _run(
        root,
        "mrl/0",
        "MRL",
        {f"test/top1@d{m}": 0.8 + m / 1000 for m in DIMS} | {f"knn/top1@d{m}": 0.7 for m in DIMS},
    )
    _run(root, "mrl/1", "MRL-E", None, status="failed")  # failed: its cells are missing
    _run(root, "ff/0", "FF-8", {"test/top1@d8": 0.75, "knn/top1@d8": 0.6})
    # FF-16 missing entirely
    _run(
        root,
        "ff/2",
        "FF-32",
        {"test/top1@d32": 0.85} | {f"knn/top1@d{m}": 0.5 + m / 100 for m in DIMS},
    )
    _run(
        root,
        "baselines",
        "baselines",
        {
            "svd/top1@d8": 0.5,
            "rand_lp/top1@d8": 0.3,
            "rand_lp/top1@d16": 0.4,
            "ff_svd/knn_top1@d8": 0.2,
        },
    )
    _run(root, "slim", "Slim. Net", {"test/top1@d8": 0.1})
    (root / "broken").mkdir()
    (root / "broken" / "run.json").write_text("{not json")
    return root


def test_tables_from_run_dirs(runs_root):
    runs = find_runs([runs_root])
    assert {r.method for r in runs if r.ok} == {"MRL", "FF-8", "FF-32", "baselines", "Slim. Net"}
    assert sum(not r.ok for r in runs) == 2  # failed + unreadable are kept, flagged
    t1 = {(r["method"], r["dim"]): r["top1"] for r in table1(runs, DIMS)}
    assert t1[("MRL", 16)] == pytest.approx(81.6)
    assert t1[("MRL-E", 8)] is None  # failed run
    assert all(r.get("failed") for r in table1(runs, DIMS) if r["method"] == "MRL-E")
    assert t1[("FF", 8)] == 75.0 and t1[("FF", 16)] is None and t1[("FF", 32)] == 85.0
    assert t1[("SVD", 8)] == 50.0 and t1[("SVD", 16)] is None
    assert t1[("Rand. LP", 16)] == 40.0 and t1[("Slim. Net", 8)] == 10.0
    t2 = {(r["method"], r["dim"]): r["top1"] for r in table2(runs, DIMS)}
    assert t2[("MRL", 32)] == 70.0 and t2[("FF", 8)] == 60.0
    assert t2[("Rand. FS", 16)] == pytest.approx(66.0)  # first 16 features of FF-max (FF-32)
    assert t2[("FF+SVD", 8)] == 20.0 and t2[("FF+SVD", 16)] is None
    assert [r["method"] for r in table1(runs, DIMS)][:: len(DIMS)] == [
        "Rand. LP",
        "SVD",
        "FF",
        "Slim. Net",
        "MRL",
        "MRL-E",
        "Slim. Net sub-nets",
    ]


def test_write_tables_files_and_csv_roundtrip(runs_root, tmp_path):
    files = write_tables([runs_root], tmp_path / "out", "fashion_mnist", DIMS, header="hdr")
    assert set(files) == {f"table{i}.{e}" for i in (1, 2) for e in ("md", "csv", "png")}
    rows = read_csv(tmp_path / "out" / "table1_fashion_mnist.csv")
    assert rows[0].keys() == {"method", "dim", "top1", "seed"}
    assert {r["method"] for r in rows} == {
        "Rand. LP",
        "SVD",
        "FF",
        "Slim. Net",
        "MRL",
        "MRL-E",
        "Slim. Net sub-nets",
    }
    text = (tmp_path / "out" / "table1_fashion_mnist.csv").read_text().splitlines()
    assert text[0] == "method,dim,top1,seed" and "MRL-E,8,,0" in text  # empty when missing
    md = (tmp_path / "out" / "table1_fashion_mnist.md").read_text()
    assert "hdr" in md and "Not completed" in md and "| 8 |" in md
    assert "| 8 | 30.00 | 50.00 | 75.00 | 10.00 | 80.80 | failed | - |" in md  # MRL-E failed
    assert "How each row was obtained" in md and "## The paper's claims" in md
    assert (tmp_path / "out" / "table2_fashion_mnist.png").stat().st_size > 1000


def test_paper_columns_for_imagenet(runs_root):
    rows = table1(find_runs([runs_root]), [8])
    from mrl.results import PAPER_TABLE1

    md = to_markdown(rows, "t", paper=PAPER_TABLE1)
    assert "80.80 (66.63, +14.17)" in md  # ours (paper, diff) for MRL at 8


def _seeded_root(root, mrl, ff, base_limit=None):
    """MRL and FF-8/FF-16 runs, one per seed, with the given top-1 fractions at 8 and 16."""
    for seed, (a, b) in enumerate(zip(mrl, ff, strict=True)):
        _run(root, f"mrl/{seed}", "MRL", {"test/top1@d8": a, "test/top1@d16": a}, seed=seed)
        for m in (8, 16):
            _run(root, f"ff/{seed}_{m}", f"FF-{m}", {f"test/top1@d{m}": b}, seed=seed)
        if base_limit:
            _run(
                root,
                f"baselines/seed{seed}",
                "baselines",
                {"svd/top1@d8": 0.5, "svd/top1@d16": 0.6},
                seed=seed,
                svd_rank_limit=base_limit,
            )
    return root


def test_seeds_give_mean_std_raw_rows_and_verdicts(tmp_path):
    root = _seeded_root(
        tmp_path / "runs", mrl=[0.80, 0.82, 0.84], ff=[0.70, 0.71, 0.72], base_limit=10
    )
    files = write_tables([root], tmp_path / "out", "fashion_mnist", [8, 16])
    rows = read_csv(files["table1.csv"])
    mrl8 = sorted((r["seed"], r["top1"]) for r in rows if r["method"] == "MRL" and r["dim"] == 8)
    assert mrl8 == [(0, 80.0), (1, 82.0), (2, 84.0)]  # the raw per-seed values
    md = files["table1.md"].read_text()
    assert "82.00 ± 2.00" in md and "71.00 ± 1.00" in md  # mean ± sample std (n - 1)
    assert "over 3 seeds (0, 1, 2)" in md
    assert "60.00 ± 0.00 †" in md  # SVD at 16 >= rank 10: the full-rank classifier, marked
    # MRL - FF = 11 points, se = sqrt(4/3 + 1/3) = 1.29: 'matches or beats' holds
    line = next(x for x in md.splitlines() if x.startswith("| MRL is as accurate as"))
    assert "**holds**" in line and "8: +11.00 ± 1.29" in line


def test_verdicts_fail_and_undecided(tmp_path):
    from mrl.claims import Claim, judge
    from mrl.results import Cell

    cells = {
        ("A", 8): Cell((70.0, 71.0, 72.0)),
        ("B", 8): Cell((80.0, 81.0, 82.0)),  # clearly better than A
        ("A", 16): Cell((80.0, 81.0, 82.0)),
        ("B", 16): Cell((80.5, 81.0, 81.5)),  # within noise
    }
    assert judge(Claim("t", "A", "B"), cells, [8, 16])["verdict"] == "does not hold"
    assert judge(Claim("t", "A", "B"), cells, [16])["verdict"] == "holds"  # equal means
    assert judge(Claim("t", "A", "B", ">"), cells, [16])["verdict"] == "undecided"
    assert judge(Claim("t", "B", "A", ">"), cells, [8])["verdict"] == "holds"
    one = {("A", 8): Cell((90.0,)), ("B", 8): Cell((10.0,))}
    assert judge(Claim("t", "A", "B", ">"), one, [8])["verdict"] == "undecided"  # no spread
    assert judge(Claim("t", "A", "C"), one, [8])["verdict"] == "not measured"


def test_aggregate_cli(runs_root, tmp_path):
    from mrl_test_utils import run_cli_cases

    script = "scripts/aggregate.py"
    out = ["--out", str(tmp_path / "agg")]
    results = run_cli_cases(  # both ``python scripts/aggregate.py ...`` runs in one subprocess
        [
            ("ok", script, [str(runs_root), "--dims", "8,16,...,32", *out], {}),
            ("bad_dims", script, [str(runs_root), "--dims", "8,16,...,33", *out], {}),
        ],
        tmp_path / "driver",
    )
    r = results["ok"]
    assert r["code"] == 0, r["stderr"]
    assert (tmp_path / "agg" / "table2_fashion_mnist.csv").is_file()
    r = results["bad_dims"]
    assert r["code"] == 2 and "cannot reach 33" in r["stderr"]


def test_notebook_executes_on_results(runs_root, tmp_path):
    import nbformat
    from nbclient import NotebookClient

    from mrl_test_utils import ROOT

    write_tables([runs_root], tmp_path / "res", "fashion_mnist", DIMS)
    nb = nbformat.read(ROOT / "notebooks" / "results.ipynb", as_version=4)
    import os

    os.environ["MRL_RESULTS"] = str(tmp_path / "res")
    try:
        NotebookClient(
            nb,
            timeout=300,
            kernel_name="python3",
            resources={"metadata": {"path": str(ROOT / "notebooks")}},
        ).execute()
    finally:
        os.environ.pop("MRL_RESULTS")
    assert (tmp_path / "res" / "tables_fashion_mnist_notebook.png").stat().st_size > 1000
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    markdown = "".join(o.get("data", {}).get("text/markdown", "") for o in outputs)
    assert "Table 1" in markdown and "MRL-E" in markdown and "paper's claims" in markdown
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) >= 3  # the inline figure and the two tables' PNGs render in the notebook
