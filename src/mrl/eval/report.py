"""Reporting of per-prefix metrics: the printed table, the PNG plot and W&B tables/plots."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from mrl.run.layout import RunDir


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


def log_to_wandb(loggers: Sequence[Any], metrics: Mapping[str, float], curves, dims) -> None:
    """Per-prefix table and one line plot (metric vs dim, a line per metric) to W&B."""
    for lg in loggers:
        if type(lg).__name__ != "WandbLogger":
            continue
        import wandb

        run = lg.experiment
        table = wandb.Table(
            columns=["dim", *curves], data=[[m, *[curves[c].get(m) for c in curves]] for m in dims]
        )
        run.log({"eval/per_prefix": table})
        if curves:
            xs = list(dims)
            run.log(
                {
                    "eval/metric_vs_dim": wandb.plot.line_series(
                        xs=xs,
                        ys=[[curves[c].get(m, float("nan")) for m in xs] for c in curves],
                        keys=list(curves),
                        title="metric vs representation size",
                        xname="dim",
                    )
                }
            )
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
    if plots:
        plot_curves(curves, RunDir(out_dir).plot, title)
    log_to_wandb(loggers, metrics, curves, dims)
    print(f"\n{title}: per-prefix metrics (%)\n{prefix_table(final, dims, list(curves))}")
    for k in sorted(metrics):
        if "@d" not in k:
            print(f"  {k} = {final[k]:.4g}")
