"""Reporting of per-prefix metrics: the printed table, the PNG plot and W&B tables/plots.

When metrics at other precisions or of baselines are present (keys
``{name}@d{m}[/{baseline}][/{precision}]``, see :mod:`mrl.eval.quantize` and
:mod:`mrl.eval.baselines`), the report adds one row per (prefix, method, precision) with the
bytes per vector and, per main metric, the value and its ``retention`` = value / the plain
float32 value at the largest evaluated prefix (printed in %, a fraction in
``precisions.json``), and one plot per metric of value against bytes per vector
(``plots/<metric>_vs_bytes.png``, a line per method and precision).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from mrl.eval.baselines import BASELINES
from mrl.eval.quantize import PRECISIONS, PROTOCOL, bytes_per_vector
from mrl.eval.registry import precision_key
from mrl.run.files import write_json_atomic
from mrl.run.layout import RunDir

PRECISION_FILE = "precisions.json"


def per_prefix_curves(
    metrics: Mapping[str, float], names: Sequence[str], dims: Sequence[int]
) -> dict[str, dict[int, float]]:
    """``{name: {dim: value}}`` for each metric ``name`` present as ``{name}@d{m}``."""
    curves: dict[str, dict[int, float]] = {}
    for name in names:
        pts = {m: metrics[f"{name}@d{m}"] for m in dims if f"{name}@d{m}" in metrics}
        if pts:
            curves[name] = pts
    return curves


def prefix_table(metrics: Mapping[str, float], dims: Sequence[int], names: Sequence[str]) -> str:
    """A plain-text table: one row per prefix, one column per metric (``{name}@d{m}``), %."""
    table = Table(box=None, pad_edge=False, header_style="bold")
    table.add_column("dim", justify="right")
    for n in names:
        table.add_column(n, justify="right")
    for m in dims:
        cells = [metrics.get(f"{n}@d{m}") for n in names]
        table.add_row(str(m), *("-" if v is None else f"{100 * v:.2f}" for v in cells))
    console = Console(width=max(80, 16 * (len(names) + 1)), record=True, file=_Null())
    console.print(table)
    return console.export_text().rstrip()


class _Null:
    def write(self, _: str) -> int:
        return 0

    def flush(self) -> None:
        pass


def plot_curves(curves: Mapping[str, Mapping[int, float]], path: Path, title: str) -> Path | None:
    """Metric (%) against prefix size, log2 x-axis, one line per metric; saved as PNG."""
    if not curves:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    for name, pts in curves.items():
        xs = sorted(pts)
        ax.plot(xs, [100 * pts[x] for x in xs], marker="o", label=name)
    return save_dims_figure(fig, ax, path, title, "%")


def save_dims_figure(fig, ax, path: Path, title: str, ylabel: str) -> Path:
    """The shared look of every metric-vs-size figure (log2 x axis, grid, legend), saved to
    ``path`` (folders made) and closed."""
    import matplotlib.pyplot as plt

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


def precision_rows(
    metrics: Mapping[str, float], names: Sequence[str], dims: Sequence[int]
) -> list[dict[str, Any]]:
    """Rows ``{dim, method, precision, bytes, <name>: value, <name> retention: fraction}``
    for every (baseline, precision) with values in ``metrics`` (the plain float32 prefix
    first); ``[]`` when it is alone. Only metrics with some other variant are kept.

    Retention divides by the plain float32 value at the largest of ``dims``.
    """
    dims = sorted(dims)
    variants = [
        (b, p)
        for b in BASELINES
        for p in PRECISIONS
        if (b, p) != ("truncate", "float32")
        and any(precision_key(f"{n}@d{m}", p, b) in metrics for n in names for m in dims)
    ]
    names = [
        n
        for n in names
        if any(precision_key(f"{n}@d{m}", p, b) in metrics for b, p in variants for m in dims)
    ]
    if not variants:
        return []
    rows = []
    for b, p in [("truncate", "float32"), *variants]:
        for m in dims:
            values = {n: metrics.get(precision_key(f"{n}@d{m}", p, b)) for n in names}
            if all(v is None for v in values.values()):
                continue
            row: dict[str, Any] = {
                "dim": m,
                "method": b,
                "precision": p,
                "bytes": bytes_per_vector(m, p),
            }
            for n, v in values.items():
                ref = metrics.get(f"{n}@d{dims[-1]}")
                row[n] = v
                row[f"{n} retention"] = v / ref if v is not None and ref else None
            rows.append(row)
    return rows


def precision_table(rows: Sequence[Mapping[str, Any]], names: Sequence[str]) -> str:
    """Plain-text table of :func:`precision_rows`: values and retention in %."""
    table = Table(box=None, pad_edge=False, header_style="bold")
    names = [n for n in names if rows and n in rows[0]]
    for c in ("dim", "method", "precision", "bytes"):
        table.add_column(c, justify="right")
    for n in names:
        table.add_column(n, justify="right")
        table.add_column("retention", justify="right")

    def pct(v: float | None) -> str:
        return "-" if v is None else f"{100 * v:.2f}"

    for r in rows:
        cells = [c for n in names for c in (pct(r[n]), pct(r[f"{n} retention"]))]
        table.add_row(str(r["dim"]), r["method"], r["precision"], str(r["bytes"]), *cells)
    console = Console(width=max(80, 14 * (2 * len(names) + 4)), record=True, file=_Null())
    console.print(table)
    return console.export_text().rstrip()


def plot_vs_bytes(
    rows: Sequence[Mapping[str, Any]], names: Sequence[str], folder: Path, title: str
) -> list[Path]:
    """One PNG per metric: value (%) against bytes per vector (log2), a line per
    (method, precision)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    for n in [n for n in names if rows and n in rows[0]]:
        fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
        for b, p in dict.fromkeys((r["method"], r["precision"]) for r in rows):
            pts = [
                (r["bytes"], r[n])
                for r in rows
                if (r["method"], r["precision"]) == (b, p) and r[n] is not None
            ]
            label = p if b == "truncate" else f"{b} {p}"
            if pts:
                ax.plot([x for x, _ in pts], [100 * v for _, v in pts], marker="o", label=label)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("bytes per vector")
        ax.set_ylabel(f"{n} (%)")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = folder / f"{n.replace('/', '_').replace('@', '_at')}_vs_bytes.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path)
        plt.close(fig)
        paths.append(path)
    return paths


def log_to_wandb(
    loggers: Sequence[Any],
    metrics: Mapping[str, float],
    curves,
    dims,
    plot: Path | None = None,
) -> None:
    """One evaluation to W&B: the per-prefix table (``eval/per_prefix``), the PNG plot as a
    ``wandb.Image`` (``eval/metric_vs_dim``), an interactive line plot
    (``eval/metric_vs_dim_chart``) and every metric once in the run summary, under the names
    of ``metrics.json`` (``knn/top1@d8``; no ``eval/`` copy)."""
    for lg in loggers:
        if not any(c.__name__ == "WandbLogger" for c in type(lg).__mro__):
            continue
        import wandb

        run = lg.experiment
        table = wandb.Table(
            columns=["dim", *curves], data=[[m, *[curves[c].get(m) for c in curves]] for m in dims]
        )
        media: dict[str, Any] = {"eval/per_prefix": table}
        if plot is not None and Path(plot).is_file():
            media["eval/metric_vs_dim"] = wandb.Image(str(plot))
        if curves:
            xs = list(dims)
            media["eval/metric_vs_dim_chart"] = wandb.plot.line_series(
                xs=xs,
                ys=[[curves[c].get(m, float("nan")) for m in xs] for c in curves],
                keys=list(curves),
                title="metric vs representation size",
                xname="dim",
            )
        run.log(media)
        run.summary.update(dict(metrics))


def report(
    final: Mapping[str, float],
    metrics: Mapping[str, float],
    names: Sequence[str],
    dims: Sequence[int],
    out_dir: Path,
    title: str,
    plots: bool = True,
    loggers: Sequence[Any] = (),
) -> None:
    """PNG plot, W&B tables/plots and the printed per-prefix table of one evaluation."""
    curves = per_prefix_curves(final, names, dims)
    plot = plot_curves(curves, RunDir(out_dir).plot, title) if plots else None
    log_to_wandb(loggers, metrics, curves, dims, plot)
    print(f"\n{title}: per-prefix metrics (%)\n{prefix_table(final, dims, list(curves))}")
    for k in sorted(metrics):
        if "@d" not in k:
            print(f"  {k} = {final[k]:.4g}")
    rows = precision_rows(metrics, names, dims)
    if rows:
        run = RunDir(out_dir)
        write_json_atomic(run.path / PRECISION_FILE, {"protocol": PROTOCOL, "rows": rows})
        if plots:
            plot_vs_bytes(rows, names, run.plot.parent, title)
        print(
            f"\n{title}: per method and precision (%; retention = value / float32 at "
            f"d{max(dims)})\n"
            f"  {PROTOCOL}\n{precision_table(rows, names)}"
        )
