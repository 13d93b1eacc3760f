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

from mrl.core.validate import is_int
from mrl.eval.report import save_dims_figure

log = logging.getLogger(__name__)

#: The extra Table 1 row: each Slim. Net width read whole by its own classifier (not the
#: paper's protocol, which reads prefixes of the full width; see mrl.objectives.slimmable).
SUBNET_ROW = "Slim. Net sub-nets"
TABLE1_METHODS = ("Rand. LP", "SVD", "FF", "Slim. Net", "MRL", "MRL-E", SUBNET_ROW)
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


def _seed(run: Run) -> int:
    seed = run.info.get("seed", 0)
    return int(seed) if is_int(seed) else 0


def _by_method(runs: Sequence[Run]) -> dict[int, dict[str, Run]]:
    """``{seed: {method: run}}``: the newest completed run of each method name (e.g. 'MRL',
    'FF-64', 'baselines') for each seed."""
    out: dict[int, dict[str, Run]] = {}
    for r in sorted(runs, key=lambda r: str(r.path)):
        if r.ok:
            out.setdefault(_seed(r), {})[r.method] = r
    return out


def _failed(runs: Sequence[Run]) -> set[tuple[str, int]]:
    """``(method, seed)`` of runs that did not complete and have no completed twin."""
    done = {(r.method, _seed(r)) for r in runs if r.ok}
    return {(r.method, _seed(r)) for r in runs if not r.ok and r.method} - done


def _seeds(runs: Sequence[Run]) -> list[int]:
    return sorted({_seed(r) for r in runs if r.method}) or [0]


def _ff_max(by: dict[str, Run]) -> Run | None:
    ff = [(int(k.split("-")[1]), r) for k, r in by.items() if k.startswith("FF-")]
    return max(ff, key=lambda t: t[0])[1] if ff else None


#: Table 1 cells: method -> (run name for the seed, metric key); ``{m}`` is the size.
_TABLE1_SOURCES: dict[str, tuple[str, str]] = {
    "Rand. LP": ("baselines", "rand_lp/top1@d{m}"),
    "SVD": ("baselines", "svd/top1@d{m}"),
    "FF": ("FF-{m}", "test/top1@d{m}"),
    "Slim. Net": ("Slim. Net", "test/top1@d{m}"),
    "MRL": ("MRL", "test/top1@d{m}"),
    "MRL-E": ("MRL-E", "test/top1@d{m}"),
    SUBNET_ROW: ("Slim. Net", "test/subnet_top1@d{m}"),
}
_TABLE2_SOURCES: dict[str, tuple[str, str]] = {
    "MRL": ("MRL", "knn/top1@d{m}"),
    "MRL-E": ("MRL-E", "knn/top1@d{m}"),
    "FF": ("FF-{m}", "knn/top1@d{m}"),
    "FF+SVD": ("baselines", "ff_svd/knn_top1@d{m}"),
    "Rand. FS": ("FF-max", "knn/top1@d{m}"),
}


def _rows(
    runs: Sequence[Run], dims: Sequence[int], sources: dict[str, tuple[str, str]]
) -> list[dict[str, Any]]:
    """Long-form rows ``{method, dim, seed, top1}`` (percent; None when missing); a cell
    whose run did not complete has ``failed: True``."""
    by_seed = _by_method(runs)
    failed = _failed(runs)
    rows = []
    for method, (source, key) in sources.items():
        for seed in _seeds(runs):
            by = by_seed.get(seed, {})
            for m in dims:
                name = source.format(m=m)
                run = _ff_max(by) if name == "FF-max" else by.get(name)
                v = run.metrics.get(key.format(m=m)) if run is not None else None
                row = {"method": method, "dim": int(m), "seed": seed, "top1": _pct(v)}
                if run is None and (name, seed) in failed:
                    row["failed"] = True
                rows.append(row)
    return rows


def table1(runs: Sequence[Run], dims: Sequence[int]) -> list[dict[str, Any]]:
    """Long-form rows ``{method, dim, seed, top1}`` (percent; None when missing) of Table 1,
    one per seed found in the runs' ``run.json``."""
    return _rows(runs, dims, _TABLE1_SOURCES)


def table2(runs: Sequence[Run], dims: Sequence[int]) -> list[dict[str, Any]]:
    """Long-form rows ``{method, dim, seed, top1}`` (1-NN accuracy, percent) of Table 2."""
    return _rows(runs, dims, _TABLE2_SOURCES)


@dataclass(frozen=True)
class Cell:
    """One table cell over seeds: mean and sample standard deviation (n - 1) in percent."""

    values: tuple[float, ...]
    failed: bool = False

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float | None:
        return sum(self.values) / self.n if self.values else None

    @property
    def std(self) -> float | None:
        if self.n < 2:
            return None
        mu = self.mean
        return (sum((v - mu) ** 2 for v in self.values) / (self.n - 1)) ** 0.5


def summarize(rows: Sequence[dict[str, Any]]) -> dict[tuple[str, int], Cell]:
    """``{(method, dim): Cell}`` over the seeds of long-form rows."""
    vals: dict[tuple[str, int], list[float]] = {}
    failed: set[tuple[str, int]] = set()
    for r in rows:
        key = (r["method"], r["dim"])
        vals.setdefault(key, [])
        if r["top1"] is not None:
            vals[key].append(float(r["top1"]))
        elif r.get("failed"):
            failed.add(key)
    return {k: Cell(tuple(v), failed=k in failed and not v) for k, v in vals.items()}


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}"


def _fmt_cell(c: Cell | None, n_seeds: int) -> str:
    if c is None or c.mean is None:
        return "failed" if c is not None and c.failed else "-"
    txt = f"{c.mean:.2f}" if c.std is None else f"{c.mean:.2f} ± {c.std:.2f}"
    if n_seeds > 1 and c.n != n_seeds:
        txt += f" (n={c.n})"
    return txt


def to_markdown(
    rows: Sequence[dict[str, Any]],
    title: str,
    header: str = "",
    paper: dict[str, dict[int, float | None]] | None = None,
    marks: dict[tuple[str, int], str] | None = None,
    notes: Sequence[str] = (),
) -> str:
    """A table with one row per dim and one column per method; each cell is the mean ± sample
    std over the seeds; with ``paper``, ``ours (paper, diff)``. ``marks`` appends a footnote
    sign to cells; ``notes`` are printed under the table."""
    methods = list(dict.fromkeys(r["method"] for r in rows))
    dims = sorted({r["dim"] for r in rows})
    seeds = sorted({r.get("seed", 0) for r in rows})
    cells = summarize(rows)
    lines = [f"# {title}", ""]
    if header:
        lines += [header, ""]
    lines += ["| dim | " + " | ".join(methods) + " |", "|---" * (len(methods) + 1) + "|"]
    for m in dims:
        out = []
        for meth in methods:
            c = cells.get((meth, m))
            txt = _fmt_cell(c, len(seeds)) + (marks or {}).get((meth, m), "")
            ref = (paper or {}).get(meth, {}).get(m)
            if paper is not None:
                ours = c.mean if c is not None else None
                diff = "" if ours is None or ref is None else f", {ours - ref:+.2f}"
                txt += f" ({_fmt(ref)}{diff})"
            out.append(txt)
        lines.append(f"| {m} | " + " | ".join(out) + " |")
    spread = (
        f"mean ± sample std (n - 1) over {len(seeds)} seeds ({', '.join(map(str, seeds))})"
        if len(seeds) > 1
        else f"one seed ({seeds[0]})"
    )
    lines += ["", f"Cells: {spread}" + (", then (paper, ours - paper)" if paper else "") + "."]
    lines += [
        "'-' = missing: not run, or a size the method cannot produce; 'failed' = its run failed."
    ]
    lines += [f"{n}" for n in notes]
    return "\n".join(lines) + "\n"


def write_csv(rows: Sequence[dict[str, Any]], path: Path) -> Path:
    """Long form ``method,dim,top1,seed`` (percent; empty top1 for a missing cell), one row per
    seed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["method", "dim", "top1", "seed"])
        for r in rows:
            top1 = "" if r["top1"] is None else f"{r['top1']:.2f}"
            w.writerow([r["method"], r["dim"], top1, r.get("seed", 0)])
    return path


def read_csv(path: str | Path) -> list[dict[str, Any]]:
    """Inverse of :func:`write_csv` (a file without the ``seed`` column reads as seed 0)."""
    with open(path, newline="") as f:
        return [
            {
                "method": r["method"],
                "dim": int(r["dim"]),
                "top1": float(r["top1"]) if r["top1"] else None,
                "seed": int(r.get("seed") or 0),
            }
            for r in csv.DictReader(f)
        ]


def plot_table(rows: Sequence[dict[str, Any]], path: Path, title: str, ylabel: str) -> Path:
    """Mean top-1 (%) against representation size, log-scale x, one line per method, error
    bars = sample std over the seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cells = summarize(rows)
    fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=120)
    for meth in dict.fromkeys(r["method"] for r in rows):
        pts = sorted(
            (m, c.mean, c.std or 0.0)
            for (name, m), c in cells.items()
            if name == meth and c.mean is not None
        )
        if pts:
            style = {"linestyle": ":"} if meth == SUBNET_ROW else {}
            ax.errorbar(
                [p[0] for p in pts],
                [p[1] for p in pts],
                yerr=[p[2] for p in pts],
                marker="o",
                capsize=3,
                label=meth,
                **style,
            )
    return save_dims_figure(fig, ax, path, title, ylabel)


TABLE1_NOTES = (
    "How each row was obtained (every network: the same backbone, data, epochs, batch size,"
    " optimiser and schedule; test set = the official test split):",
    "- MRL / MRL-E: one network each, trained with the nested loss over every size; cell m ="
    " top-1 of prefix m (MRL: its own head; MRL-E: the shared head's first m columns).",
    "- FF: one network per size m, its classifier reading only the first m features.",
    "- Slim. Net: the slimmable version of the same ResNet (widths 25/50/75/100%, switchable BN),"
    " trained with the same recipe; cell m = prefix m of the full-width representation read by"
    " the full-width classifier's first m columns (the paper's protocol). 'Slim. Net sub-nets' ="
    " each width's sub-network read whole (an extra row, not in the paper).",
    "- SVD: rank-m approximation of FF-max's classifier on FF-max's features (no training).",
    "- Rand. LP: a linear probe on m random features of FF-max's frozen representation, trained"
    " for the networks' number of epochs at their batch size.",
)
TABLE2_NOTES = (
    "1-NN accuracy: database = the training set, queries = the test set, cosine similarity on"
    " L2-normalised prefixes. MRL / MRL-E / FF-m: the prefix m of each network's embedding;"
    " FF+SVD: FF-max's features projected on the top m right singular vectors of the train"
    " features; Rand. FS: the first m features of FF-max.",
)


def write_tables(
    roots: Iterable[str | Path],
    out_dir: str | Path,
    data: str,
    dims: Sequence[int],
    header: str = "",
    failed_stages: Sequence[str] = (),
) -> dict[str, Path]:
    """Aggregate ``roots`` into ``table{1,2}_<data>.{md,csv,png}`` under ``out_dir``.

    Each table's ``.md`` ends with how its rows were obtained and the paper's qualitative
    claims judged against the spread over seeds (:mod:`mrl.claims`).
    """
    from mrl.claims import TABLE1_CLAIMS, TABLE2_CLAIMS, judge_claims

    out_dir = Path(out_dir)
    runs = find_runs(roots)
    failed = [r for r in runs if not r.ok]
    for r in failed:
        log.warning("run %s is %s: its cells are missing", r.path, r.info.get("status"))
    note = header
    if failed or failed_stages:
        what = [f"{r.method or r.path.name} ({r.info.get('status')})" for r in failed]
        what += [f"stage {s} (failed)" for s in failed_stages]
        note += ("\n\n" if note else "") + "Not completed: " + ", ".join(what)
    paper = data == "imagenet"
    rows1, rows2 = table1(runs, dims), table2(runs, dims)
    marks, svd_notes = _svd_marks(runs, dims)
    written = {}
    for name, rows, ref, ylabel, title, mk, notes, claims in (
        (
            "table1",
            rows1,
            PAPER_TABLE1,
            "top-1 (%)",
            f"Table 1: top-1 by representation size ({data})",
            marks,
            (*TABLE1_NOTES, *svd_notes),
            TABLE1_CLAIMS,
        ),
        (
            "table2",
            rows2,
            PAPER_TABLE2,
            "1-NN accuracy (%)",
            f"Table 2: 1-NN accuracy by representation size ({data})",
            {},
            TABLE2_NOTES,
            TABLE2_CLAIMS,
        ),
    ):
        stem = out_dir / f"{name}_{data}"
        out_dir.mkdir(parents=True, exist_ok=True)
        verdicts = judge_claims(claims, summarize(rows), dims)
        text = to_markdown(rows, title, note, ref if paper else None, mk, ["", *notes])
        text += "\n" + verdicts
        stem.with_suffix(".md").write_text(text)
        written[f"{name}.md"] = stem.with_suffix(".md")
        written[f"{name}.csv"] = write_csv(rows, stem.with_suffix(".csv"))
        written[f"{name}.png"] = plot_table(rows, stem.with_suffix(".png"), title, ylabel)
    return written


def _svd_marks(runs: Sequence[Run], dims: Sequence[int]) -> tuple[dict, list[str]]:
    """'†' on SVD cells whose rank reaches the classifier's rank min(C, d): there the
    "approximation" is FF-max's classifier itself."""
    limits = {
        int(r.info["svd_rank_limit"])
        for r in runs
        if r.ok and r.method == "baselines" and isinstance(r.info.get("svd_rank_limit"), int)
    }
    if not limits:
        return {}, []
    limit = min(limits)
    marks = {("SVD", m): " †" for m in dims if m >= limit}
    note = (
        f"† SVD at rank >= {limit} = min(classes, width): the full-rank classifier, i.e."
        " FF-max's own head (the official code's convention)."
    )
    return marks, [note] if marks else []
