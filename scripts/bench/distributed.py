"""One CPU process against two (``trainer=ddp_cpu``), through the real ``train.py`` / ``eval.py``.

* Training: the same Fashion-MNIST run (seed, data, epochs) as 1 process with batch ``B`` and
  as 2 DDP processes with ``B/2`` each (the same global batch); wall-clock of each command,
  and both runs' ``test/top1`` (they differ: BatchNorm statistics are per process).
* Evaluation: ``eval.py`` on the 1-process checkpoint with ``devices=1`` and ``devices=2``;
  the largest difference over every kNN and linear metric (expected: 0, the gathered
  embeddings being the single process's).

On a 2-core machine two processes share the same cores, so no speed-up is expected; the
rows show the cost of running multi-process (the preset exists to check multi-device runs
without GPUs).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from .common import row

ROOT = Path(__file__).resolve().parents[2]


def _run(args: list[str], cwd: Path) -> float:
    t = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, *args], cwd=cwd, capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args[:3])} ... failed: {proc.stderr.strip()[-500:]}")
    return time.perf_counter() - t


def ddp_cpu(subset: int, batch: int, epochs: int, test_subset: int) -> list[dict[str, Any]]:
    with tempfile.TemporaryDirectory(prefix="mrl-bench-ddp-") as tmp:
        tmp = Path(tmp)
        common = [
            f"data.subset={subset}",
            f"data.test_subset={test_subset}",
            f"data.val_size={test_subset}",
            f"trainer.max_epochs={epochs}",
            "logger=csv",
            "seed=0",
        ]
        secs, top1 = {}, {}
        for n, trainer, b in ((1, "cpu", batch), (2, "ddp_cpu", batch // 2)):
            out = tmp / f"train{n}"
            secs[n] = _run(
                [
                    str(ROOT / "train.py"),
                    f"trainer={trainer}",
                    f"data.batch_size={b}",
                    *common,
                    f"hydra.run.dir={out}",
                ],
                tmp,
            )
            top1[n] = json.loads((out / "metrics.json").read_text())["test/top1"]
        ckpt = tmp / "train1" / "checkpoints" / "last.ckpt"
        evals, esecs = {}, {}
        for n in (1, 2):
            out = tmp / f"eval{n}"
            esecs[n] = _run(
                [
                    str(ROOT / "eval.py"),
                    f"ckpt_path={ckpt}",
                    "eval=[knn,linear]",
                    f"devices={n}",
                    "logger=csv",
                    f"hydra.run.dir={out}",
                ],
                tmp,
            )
            evals[n] = json.loads((out / "metrics.json").read_text())
    keys = [k for k in evals[1] if k.startswith(("knn/", "linear/"))]
    diff = max(abs(evals[1][k] - evals[2][k]) for k in keys)
    what = f"Fashion-MNIST {subset} images, {epochs} epoch(s), global batch {batch}"
    return [
        row(
            "ddp_cpu/train_wall_2proc_vs_1proc",
            secs[2] / secs[1],
            "<=",
            1.5,
            note=f"{what}: {secs[1]:.0f} s (1 process) vs {secs[2]:.0f} s (2 processes)",
            seconds_1proc=secs[1],
            seconds_2proc=secs[2],
        ),
        row(
            "ddp_cpu/test_top1_2proc_minus_1proc",
            top1[2] - top1[1],
            "|x| <=",
            0.03,
            unit="",
            note=f"test/top1 {top1[1]:.4f} (1 process) vs {top1[2]:.4f} (2 processes)",
            top1_1proc=top1[1],
            top1_2proc=top1[2],
        ),
        row(
            "ddp_cpu/eval_metrics_max_abs_diff",
            diff,
            "|x| <=",
            1e-9,
            unit="",
            note=f"eval.py devices=2 vs devices=1 on one checkpoint, {len(keys)} kNN/linear "
            f"metrics; {esecs[1]:.0f} s vs {esecs[2]:.0f} s",
        ),
        row(
            "ddp_cpu/eval_wall_2proc_vs_1proc",
            esecs[2] / esecs[1],
            "<=",
            1.5,
            note=f"eval.py embedding pass + kNN/linear: {esecs[1]:.0f} s vs {esecs[2]:.0f} s",
        ),
    ]
