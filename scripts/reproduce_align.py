"""The paper's vision + language (ALIGN) row on a CPU: MRL vs FF dual encoders (#14 item 4).

    python scripts/reproduce_align.py [--out results] [--ff-dims 8,256] [--seed 0]
                                      [-- Hydra overrides for every train.py run]

Runs ``train.py experiment=align_fashion_mnist`` (Fashion-MNIST images with class captions, a
half-width ResNet-18 image tower and a MiniLM text tower, both projected to 256 dims):

1. MRL: the nested symmetric InfoNCE over the prefixes 8..256.
2. FF-k for every k of ``--ff-dims`` (``method=ff mrl.ff_dim=k``: k-wide projections, only
   prefix k trained); the largest dims' FF (FF-256) is FF at full width.
3. FF (truncated): the largest FF model's first m dims, for every m (plain truncation; from
   the same run's test metrics, no training).
4. PCA: the top m principal components of the largest FF model's embeddings, fitted on its
   training-image embeddings only and applied to both towers (``objective.baselines=
   [truncate,pca]`` on that run; no training).

Per run and prefix (test split: the 10k official test images against the 70 distinct
captions): image->text and text->image R@{1,5,10}, zero-shot top-1 (class prompts) and kNN
top-1 / top-5 (database: the training images). Writes ``<out>/align_fashion_mnist.csv`` (long:
``method,task,metric,dim,value``, values in %), ``.md`` (tables and each run's wall-clock) and
``.png`` (the four headline metrics against dims). Resumable: a run dir whose ``run.json``
says completed is reused when its overrides and recorded config are what this call composes
today (else refused by name, left as it is); an unfinished one continues from its
``last.ckpt`` (``ckpt_path=auto``). Exit status 1 when a run failed (the others are still tabled).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENT = "align_fashion_mnist"
DIMS = (8, 16, 32, 64, 128, 256)  # mrl.dims of the experiment
#: (task, metric) -> metrics.json name (``test/{name}@d{m}``)
METRICS = {
    ("i2t", "R@1"): "i2t_R@1",
    ("i2t", "R@5"): "i2t_R@5",
    ("i2t", "R@10"): "i2t_R@10",
    ("t2i", "R@1"): "t2i_R@1",
    ("t2i", "R@5"): "t2i_R@5",
    ("t2i", "R@10"): "t2i_R@10",
    ("zeroshot", "top1"): "zeroshot_top1",
    ("knn", "top1"): "knn_top1",
    ("knn", "top5"): "knn_top5",
}
HEADLINE = (("i2t", "R@1"), ("t2i", "R@1"), ("zeroshot", "top1"), ("knn", "top1"))
COLUMNS = ("method", "task", "metric", "dim", "value")
FF_TRUNC = "FF (truncated)"
PCA = "PCA"


def completed(run_dir: Path) -> bool:
    try:
        return json.loads((run_dir / "run.json").read_text()).get("status") == "completed"
    except (OSError, ValueError):
        return False


def train(run_dir: Path, args: list[str], extra: list[str]) -> float:
    """``train.py experiment=align_fashion_mnist <args>`` into ``run_dir`` unless completed;
    returns its wall-clock seconds (0 when reused). A failure, or a completed run dir made by
    other overrides or another config (:func:`mrl.run.reuse.stale_reason`: never reused,
    never overwritten), raises RuntimeError."""
    from mrl.run.reuse import stale_reason

    overrides = [f"experiment={EXPERIMENT}", "ckpt_path=auto", *args, *extra]
    if completed(run_dir):
        reason = stale_reason("train", overrides, run_dir)
        if reason:
            raise RuntimeError(f"{run_dir} {reason}; remove it or use another --out")
        print(f"== reusing {run_dir}", flush=True)
        return 0.0
    cmd = [sys.executable, str(ROOT / "train.py"), f"hydra.run.dir={run_dir}", *overrides]
    print("+", " ".join(cmd[1:]), flush=True)
    t = time.time()
    env = {**os.environ, "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1")}
    code = subprocess.call(cmd, cwd=ROOT, env=env)
    if code != 0:
        raise RuntimeError(f"train.py failed (exit {code}); see {run_dir}")
    return time.time() - t


def rows_of(run_dir: Path, method: str, dims: list[int], suffix: str = "") -> list[dict]:
    """Long rows (values in %) of a finished run's test metrics at ``dims`` (``suffix``: a
    baseline's, e.g. ``/pca``)."""
    metrics = json.loads((run_dir / "metrics.json").read_text())
    out = []
    for (task, metric), name in METRICS.items():
        for m in dims:
            v = metrics.get(f"test/{name}@d{m}{suffix}")
            if v is not None:
                out.append(
                    {"method": method, "task": task, "metric": metric, "dim": m, "value": 100 * v}
                )
    return out


def table(rows: list[dict], task: str, metric: str, methods: list[str]) -> str:
    cells = {
        (r["method"], r["dim"]): r["value"]
        for r in rows
        if (r["task"], r["metric"]) == (task, metric)
    }
    lines = ["| dim | " + " | ".join(methods) + " |", "|" + "---|" * (1 + len(methods))]
    for m in sorted({d for _, d in cells}):
        vals = [f"{cells[(n, m)]:.2f}" if (n, m) in cells else "-" for n in methods]
        lines.append(f"| {m} | " + " | ".join(vals) + " |")
    return "\n".join(lines)


def plot(rows: list[dict], methods: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(10, 7), dpi=110)
    for ax, (task, metric) in zip(axes.ravel(), HEADLINE, strict=True):
        for i, name in enumerate(methods):
            pts = sorted(
                (r["dim"], r["value"])
                for r in rows
                if r["method"] == name and (r["task"], r["metric"]) == (task, metric)
            )
            if pts:
                style = "--" if name in (FF_TRUNC, PCA) else "-"
                marker = "s" if name == "FF" else "o"
                ax.plot(*zip(*pts, strict=True), style, marker=marker, color=f"C{i}", label=name)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("representation size (dims)")
        ax.set_ylabel(f"{task} {metric} (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"Matryoshka dual encoder ({EXPERIMENT}), test split")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra: list[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, extra = argv[:i], argv[i + 1 :]
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="results", help="output folder (run dirs under runs/)")
    p.add_argument(
        "--ff-dims",
        default=f"{DIMS[0]},{DIMS[-1]}",
        help=f"comma-separated k of the FF-k runs (default {DIMS[0]},{DIMS[-1]}: the smallest "
        "prefix and full width)",
    )
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    try:
        ff_dims = sorted({int(k) for k in args.ff_dims.split(",") if k.strip()})
    except ValueError:
        print(f"error: --ff-dims={args.ff_dims!r} is not a list of integers", file=sys.stderr)
        return 2
    bad = [k for k in ff_dims if k not in DIMS]
    if bad or not ff_dims:
        print(f"error: --ff-dims has {bad or 'nothing'}; use dims of {list(DIMS)}", file=sys.stderr)
        return 2
    out = (ROOT / args.out).resolve() if not Path(args.out).is_absolute() else Path(args.out)
    runs = out / "runs" / EXPERIMENT
    runs.mkdir(parents=True, exist_ok=True)
    seed = [f"seed={args.seed}"]

    jobs = [("MRL", runs / f"mrl_s{args.seed}", seed)]
    jobs += [
        (
            f"FF-{k}",
            runs / f"ff{k}_s{args.seed}",
            ["method=ff", f"mrl.ff_dim={k}", *seed]
            + (["objective.baselines=[truncate,pca]"] if k == ff_dims[-1] else []),
        )
        for k in ff_dims
    ]
    rows: list[dict] = []
    timing: list[str] = []
    failed = False
    for name, run_dir, job_args in jobs:
        try:
            secs = train(run_dir, job_args, extra)
        except RuntimeError as e:
            print(f"error: {name}: {e}", file=sys.stderr)
            failed = True
            timing.append(f"- {name}: failed ({run_dir})")
            continue
        info = json.loads((run_dir / "run.json").read_text())
        timing.append(
            f"- {name}: {info.get('global_step')} steps, "
            + (f"{secs:.0f} s wall-clock" if secs else f"reused ({info.get('seconds')} s recorded)")
        )
        if name == "MRL":
            rows += rows_of(run_dir, "MRL", list(DIMS))
        else:
            k = int(name.split("-")[1])
            rows += rows_of(run_dir, "FF", [k])
            if k == ff_dims[-1]:  # the largest FF: plain truncation at every prefix
                rows += rows_of(run_dir, FF_TRUNC, [m for m in DIMS if m <= k])
                rows += rows_of(run_dir, PCA, [m for m in DIMS if m <= k], "/pca")
    methods = [m for m in ("MRL", "FF", FF_TRUNC, PCA) if any(r["method"] == m for r in rows)]
    stem = out / EXPERIMENT
    with open(stem.with_suffix(".csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(COLUMNS))
        w.writeheader()
        for r in rows:
            w.writerow({**r, "value": f"{r['value']:.2f}"})
    text = [
        f"# Matryoshka dual encoder on Fashion-MNIST captions ({EXPERIMENT}, seed {args.seed})",
        "",
        "Test split: the 10,000 official test images; texts: the 70 distinct captions (10 "
        "classes x (6 templates + the WordNet gloss)), relevant = same class. R@k: queries with "
        "a relevant item among the k nearest / all queries. Zero-shot: class prompts (the 6 "
        "templates) as the classifier. kNN: weighted 20-NN vote over the training images. "
        f"FF = FF-k at d=k; {FF_TRUNC} = the first m dims of FF-{ff_dims[-1]}; {PCA} = the top m "
        f"principal components of FF-{ff_dims[-1]}'s embeddings (fitted on its training-image "
        "embeddings, applied to images and texts alike). Values in %.",
        "",
    ]
    if extra:
        text += [f"Overrides: `{' '.join(extra)}`", ""]
    for task, metric in METRICS:
        text += [f"## {task} {metric}", "", table(rows, task, metric, methods), ""]
    text += ["## Runs", "", *timing, ""]
    stem.with_suffix(".md").write_text("\n".join(text))
    if rows:
        plot(rows, methods, stem.with_suffix(".png"))
    print("\n".join(text))
    print(f"written: {stem}.{{md,csv,png}}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
