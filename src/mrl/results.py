"""Gather run dirs into the paper's tables: Table 1 (top-1) and Table 2 (1-NN accuracy).

A run dir is any folder holding ``run.json`` (method, dims, status) and ``metrics.json``
(flat, fractions). Tables are long-form rows ``method, dim, top1`` with ``top1`` in percent
(as the paper prints) and ``None`` for a missing cell: a failed or absent run, or a size a
method cannot produce (SVD above the number of classes, Slim. Net between its widths).

Where each cell comes from (``m`` = representation size):

======================  =========================================  ==========================
method                  Table 1 (top-1)                            Table 2 (1-NN)
======================  =========================================  ==========================
MRL, MRL-E              ``test/top1@d{m}`` of the MRL(-E) run      ``knn/top1@d{m}``
FF                      ``test/top1@d{m}`` of the FF-m run         ``knn/top1@d{m}`` of FF-m
SVD                     ``svd/top1@d{m}`` (baselines run)          -
Rand. LP                ``rand_lp/top1@d{m}`` (baselines run)      -
Slim. Net               ``test/top1@d{m}`` of the slimmable run    -
FF+SVD                  -                                          ``ff_svd/knn_top1@d{m}``
Rand. FS                -                                          ``knn/top1@d{m}`` of FF-max
======================  =========================================  ==========================
"""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

TABLE1_METHODS = ("Rand. LP", "SVD", "FF", "Slim. Net", "MRL", "MRL-E")
TABLE2_METHODS = ("MRL", "MRL-E", "FF", "FF+SVD", "Rand. FS")

# The paper's ResNet50 / ImageNet-1K numbers (Kusupati et al., 2022, Tables 1-2); None = not reported/verified.
PAPER_DIMS = (8, 16, 32, 64, 128, 256, 512, 1024, 2048)


def _paper(values: Sequence[float | None]) -> dict[int, float | None]:
    return dict(zip(PAPER_DIMS, values, strict=True))


PAPER_TABLE1: dict[str, dict[int, float | None]] = {
    "Rand. LP": _paper([4.56, 11.29, 27.21, 49.47, 65.70, 72.43, 74.94, 76.10, 76.87]),
    "SVD": _paper([2.34, 7.17, 20.46, 48.10, 67.24, 74.59, 76.78, 76.87, None]),
    "FF": {8: 65.29, 16: 72.85, 128: 75.29, 2048: 76.87},
    "Slim. Net": {8: 0.42, 16: 0.96, 128: 14.15, 2048: 76.26},
    "MRL": _paper([66.63, 73.53, 75.03, 75.82, 76.30, 76.47, 76.65, 76.76, 76.80]),
    "MRL-E": _paper([56.66, 71.94, 74.48, 75.35, 75.80, 76.22, 76.36, 76.48, 76.51]),
}
PAPER_TABLE2: dict[str, dict[int, float | None]] = {
    "MRL": _paper([62.19, 67.91, 69.46, 70.17, 70.52, 70.62, 70.82, 70.89, 70.97]),
    "MRL-E": _paper([57.45, 67.05, 68.60, 69.61, 70.12, 70.36, 70.74, 71.07, 71.21]),
    "FF+SVD": _paper([19.14, 46.02, 60.78, 67.04, 69.63, 70.67, 71.06, 71.22, 71.21]),
    "Rand. FS": _paper([2.36, 12.06, 32.91, 49.91, 60.91, 65.75, 68.77, 70.41, 71.19]),
}


@dataclass
class Run:
    """One run dir: its ``run.json`` info and ``metrics.json`` metrics."""

    path: Path
    info: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)

    @property
    def method(self) -> str:
        return str(self.info.get("method", ""))

    @property
    def ok(self) -> bool:
        return self.info.get("status") == "completed"


def find_runs(roots: Iterable[str | Path]) -> list[Run]:
    """Every run dir under ``roots`` (recursively). Unreadable or failed runs are kept but
    flagged (``ok`` false), so a failed job never stops the aggregation."""
    runs = []
    for root in roots:
        for info_file in sorted(Path(root).rglob("run.json")):
            run = Run(info_file.parent)
            try:
                run.info = json.loads(info_file.read_text())
            except (OSError, ValueError) as e:
                run.info = {"status": "unreadable", "error": str(e)}
            mfile = run.path / "metrics.json"
            if mfile.is_file():
                try:
                    run.metrics = json.loads(mfile.read_text())
                except (OSError, ValueError):
                    run.info["status"] = "unreadable"
            if run.info.get("task") == "eval":
                continue  # eval dirs re-state a training run's numbers
            runs.append(run)
    return runs


def _pct(v: Any) -> float | None:
    return None if v is None else round(100.0 * float(v), 2)


def _by_method(runs: Sequence[Run]) -> dict[str, Run]:
    """The newest completed run of each method name (e.g. 'MRL', 'FF-64', 'baselines')."""
    out: dict[str, Run] = {}
    for r in sorted(runs, key=lambda r: str(r.path)):
        if r.ok:
            out[r.method] = r
    return out


def _ff_max(by: dict[str, Run]) -> Run | None:
    ff = [(int(k.split("-")[1]), r) for k, r in by.items() if k.startswith("FF-")]
    return max(ff, key=lambda t: t[0])[1] if ff else None


def table1(runs: Sequence[Run], dims: Sequence[int]) -> list[dict[str, Any]]:
    """Long-form rows ``{method, dim, top1}`` (percent; None when missing) of Table 1."""
    by = _by_method(runs)
    base = by.get("baselines")
    slim = by.get("Slim. Net")
    rows = []
    for method in TABLE1_METHODS:
        for m in dims:
            v = None
            if method in ("MRL", "MRL-E") and method in by:
                v = by[method].metrics.get(f"test/top1@d{m}")
            elif method == "FF" and f"FF-{m}" in by:
                v = by[f"FF-{m}"].metrics.get(f"test/top1@d{m}")
            elif method == "SVD" and base:
                v = base.metrics.get(f"svd/top1@d{m}")
            elif method == "Rand. LP" and base:
                v = base.metrics.get(f"rand_lp/top1@d{m}")
            elif method == "Slim. Net" and slim:
                v = slim.metrics.get(f"test/top1@d{m}")
            rows.append({"method": method, "dim": int(m), "top1": _pct(v)})
    return rows


def table2(runs: Sequence[Run], dims: Sequence[int]) -> list[dict[str, Any]]:
    """Long-form rows ``{method, dim, top1}`` (1-NN accuracy, percent) of Table 2."""
    by = _by_method(runs)
    base = by.get("baselines")
    ffmax = _ff_max(by)
    rows = []
    for method in TABLE2_METHODS:
        for m in dims:
            v = None
            if method in ("MRL", "MRL-E") and method in by:
                v = by[method].metrics.get(f"knn/top1@d{m}")
            elif method == "FF" and f"FF-{m}" in by:
                v = by[f"FF-{m}"].metrics.get(f"knn/top1@d{m}")
            elif method == "FF+SVD" and base:
                v = base.metrics.get(f"ff_svd/knn_top1@d{m}")
            elif method == "Rand. FS" and ffmax:
                v = ffmax.metrics.get(f"knn/top1@d{m}")
            rows.append({"method": method, "dim": int(m), "top1": _pct(v)})
    return rows


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}"


def to_markdown(
    rows: Sequence[dict[str, Any]],
    title: str,
    header: str = "",
    paper: dict[str, dict[int, float | None]] | None = None,
) -> str:
    """A table with one row per dim and one column per method; with ``paper``, each cell is
    ``ours (paper, diff)``."""
    methods = list(dict.fromkeys(r["method"] for r in rows))
    dims = sorted({r["dim"] for r in rows})
    cell = {(r["method"], r["dim"]): r["top1"] for r in rows}
    lines = [f"# {title}", ""]
    if header:
        lines += [header, ""]
    lines += ["| dim | " + " | ".join(methods) + " |", "|---" * (len(methods) + 1) + "|"]
    for m in dims:
        cells = []
        for meth in methods:
            ours = cell.get((meth, m))
            txt = _fmt(ours)
            ref = (paper or {}).get(meth, {}).get(m)
            if paper is not None:
                diff = "" if ours is None or ref is None else f", {ours - ref:+.2f}"
                txt += f" ({_fmt(ref)}{diff})"
            cells.append(txt)
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    if paper is not None:
        lines += ["", "Cells: ours (paper, ours - paper). '-' = missing."]
    else:
        lines += ["", "'-' = missing: not run, failed, or a size the method cannot produce."]
    return "\n".join(lines) + "\n"


def write_csv(rows: Sequence[dict[str, Any]], path: Path) -> Path:
    """Long form ``method,dim,top1`` (percent; empty for a missing cell)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["method", "dim", "top1"])
        for r in rows:
            w.writerow([r["method"], r["dim"], "" if r["top1"] is None else f"{r['top1']:.2f}"])
    return path


def read_csv(path: str | Path) -> list[dict[str, Any]]:
    """Inverse of :func:`write_csv`."""
    with open(path, newline="") as f:
        return [
            {
                "method": r["method"],
                "dim": int(r["dim"]),
                "top1": float(r["top1"]) if r["top1"] else None,
            }
            for r in csv.DictReader(f)
        ]


def plot_table(rows: Sequence[dict[str, Any]], path: Path, title: str, ylabel: str) -> Path:
    """Top-1 (%) against representation size, log-scale x, one line per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=120)
    for meth in dict.fromkeys(r["method"] for r in rows):
        pts = sorted(
            (r["dim"], r["top1"]) for r in rows if r["method"] == meth and r["top1"] is not None
        )
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=meth)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("representation size (dims)")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def write_tables(
    roots: Iterable[str | Path],
    out_dir: str | Path,
    data: str,
    dims: Sequence[int],
    header: str = "",
) -> dict[str, Path]:
    """Aggregate ``roots`` into ``table{1,2}_<data>.{md,csv,png}`` under ``out_dir``."""
    out_dir = Path(out_dir)
    runs = find_runs(roots)
    failed = [r for r in runs if not r.ok]
    for r in failed:
        log.warning("run %s is %s: its cells are missing", r.path, r.info.get("status"))
    note = header
    if failed:
        note += (
            ("\n\n" if note else "")
            + "Not completed: "
            + ", ".join(f"{r.method or r.path.name} ({r.info.get('status')})" for r in failed)
        )
    paper = data == "imagenet"
    written = {}
    for name, rows, ref, ylabel, title in (
        (
            "table1",
            table1(runs, dims),
            PAPER_TABLE1,
            "top-1 (%)",
            f"Table 1: top-1 by representation size ({data})",
        ),
        (
            "table2",
            table2(runs, dims),
            PAPER_TABLE2,
            "1-NN accuracy (%)",
            f"Table 2: 1-NN accuracy by representation size ({data})",
        ),
    ):
        stem = out_dir / f"{name}_{data}"
        out_dir.mkdir(parents=True, exist_ok=True)
        stem.with_suffix(".md").write_text(to_markdown(rows, title, note, ref if paper else None))
        written[f"{name}.md"] = stem.with_suffix(".md")
        written[f"{name}.csv"] = write_csv(rows, stem.with_suffix(".csv"))
        written[f"{name}.png"] = plot_table(rows, stem.with_suffix(".png"), title, ylabel)
    return written
