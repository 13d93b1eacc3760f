"""The sweep summary: one row per multirun job at the sweep dir's root.

``python train.py -m a=1,2 b=x,y`` writes, beside the numbered job dirs,
``sweep_summary.json`` (a list of rows: ``job``, ``overrides``, ``status``, ``metric``,
``value``, ``run_dir``, ``error``) and ``sweep_summary.md`` (the same as a table). Each job adds
its row when it ends, failed or not, under a file lock, so the summary is right with any
launcher (in-process, submitit local or SLURM) and after an interrupted sweep. ``value`` is the
job's ``optimized_metric`` (what the task returned to the sweeper), ``null`` when it failed.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig

from mrl.run.files import file_lock, write_json_atomic, write_text_atomic

SUMMARY_JSON = "sweep_summary.json"
SUMMARY_MD = "sweep_summary.md"


def _number(value: Any) -> float | None:
    try:
        v = float(value.item() if hasattr(value, "item") else value)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def _error(job_return: JobReturn, run_dir: Path) -> str | None:
    try:
        record = json.loads((run_dir / "run.json").read_text())
        if record.get("error"):
            return str(record["error"])
    except (OSError, ValueError):
        pass
    exc = job_return._return_value  # the exception of a failed job (not re-raised here)
    return " ".join(f"{type(exc).__name__}: {exc}".split())[:300] if exc is not None else None


def job_row(config: DictConfig, job_return: JobReturn) -> dict[str, Any]:
    """The summary row of one finished job."""
    run_dir = Path(str(config.hydra.runtime.output_dir))
    ok = job_return.status == JobStatus.COMPLETED
    return {
        "job": int(config.hydra.job.num),
        "overrides": list(job_return.overrides or []),
        "status": "completed" if ok else "failed",
        "metric": config.get("optimized_metric"),
        "value": _number(job_return._return_value) if ok else None,
        "run_dir": str(run_dir),
        "error": None if ok else _error(job_return, run_dir),
    }


def write_summary(sweep_dir: Path, row: dict[str, Any]) -> list[dict[str, Any]]:
    """Add (or replace) ``row`` in the sweep dir's summary files; returns every row."""
    path = sweep_dir / SUMMARY_JSON
    with file_lock(path):
        try:
            rows = json.loads(path.read_text())
        except (OSError, ValueError):
            rows = []
        rows = sorted(
            [r for r in rows if r.get("job") != row["job"]] + [row], key=lambda r: r["job"]
        )
        write_json_atomic(path, rows)
        write_text_atomic(sweep_dir / SUMMARY_MD, summary_markdown(rows))
    return rows


def summary_markdown(rows: list[dict[str, Any]]) -> str:
    """The rows as a Markdown table (value as stored: fractions for accuracies)."""
    lines = [
        "| job | overrides | status | metric | value | run dir |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        value = "-" if r["value"] is None else f"{r['value']:.4f}"
        status = r["status"] if not r.get("error") else f"{r['status']}: {r['error']}"
        overrides = " ".join(r["overrides"]) or "(none)"
        lines.append(
            f"| {r['job']} | {overrides} | {status} | {r['metric'] or '-'} | {value} | "
            f"{Path(r['run_dir']).name} |"
        )
    return "\n".join(lines) + "\n"


class SweepSummary(Callback):
    """Hydra callback (``hydra.callbacks.sweep_summary``): the summary rows of a multirun."""

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        if config.hydra.mode != RunMode.MULTIRUN:
            return
        try:
            write_summary(Path(str(config.hydra.sweep.dir)), job_row(config, job_return))
        except OSError as e:  # the job's own outcome matters more than its summary row
            print(f"warning: could not write the sweep summary: {e}")

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        path = Path(str(config.hydra.sweep.dir)) / SUMMARY_MD
        if path.is_file():
            print(f"\nsweep summary ({path}):\n{path.read_text()}")
