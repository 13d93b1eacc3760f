"""The paper's other experiments on Fashion-MNIST, MRL against FF at every prefix.

    python scripts/reproduce_paper.py [--only interpolation,robustness,adaptive,novel,longtail]
                                      [--seeds 0,1,2] [--out results] [-- Hydra overrides]

* ``interpolation`` (paper Table 5): sizes that were never trained (12, 24, 48, 96, 192,
  between the trained 8..256) read from the Table 1 MRL and MRL-E runs: 1-NN accuracy of
  both, and MRL-E's shared classifier's first m columns; beside the trained neighbours.
* ``robustness`` (paper Table 17): the Table 1 MRL and FF-k runs on a seeded corruption suite
  of the test set (:mod:`mrl.shifts`: noise, blur, contrast, rotation, elastic at severities
  1-3): per-prefix top-1 and 1-NN (clean training set as the database).
* ``adaptive`` (paper Figure 6, Table 3): the Table 1 MRL runs' confidence cascade (top-1 at
  a budget of expected dims vs the fixed size) and funnel retrieval (shortlist of 200 at
  8..64 dims, rerank at full width) vs exact search: mAP@10, FLOP ratio, measured speed-up.
* ``novel`` (paper Section 4.2, Table 15): MRL and FF-k trained on the base classes 0-4 only
  (``data.train_classes``); 5-way 1- and 5-shot nearest-class-mean accuracy on the novel
  classes 5-9 (support from their training images, queries from the test set; 200 episodes).
* ``longtail`` (FLUID): MRL and FF-k trained on a long-tailed training set
  (``data.imbalance_ratio=100``, a seeded exponential profile: 14.6k of the 59k images)
  for :data:`LONGTAIL_EPOCHS` epochs, so that they see as many images as Table 1's networks;
  per-prefix top-1 on the head, medium and tail thirds of the classes.

``interpolation``, ``robustness`` and ``adaptive`` need the Table 1 runs (``make reproduce-table1`` with the
same ``--seeds``); ``novel`` and ``longtail`` train their own under ``<out>/runs/<experiment>``
(resumable like reproduce.py). Each writes ``<out>/<name>_fashion_mnist.{md,csv,png}``: long-form
CSV with a ``seed`` column, mean ± std over the seeds and the paper's claim judged against that
spread (:mod:`mrl.claims`). Exit status 1 when any stage failed.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from mrl.claims import Claim

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

from reproduce import train_sweep  # noqa: E402

EXPERIMENT = "table1_fashion_mnist"
DIMS = [8, 16, 32, 64, 128, 256]
INTERPOLATED = [12, 24, 48, 96, 192]
BASE, NOVEL = [0, 1, 2, 3, 4], [5, 6, 7, 8, 9]
#: long-tail training epochs: 4 x 14.6k long-tailed images ~ Table 1's 1 x 59k (same budget)
LONGTAIL_EPOCHS = 4


# --------------------------------------------------------------------------- runs
def completed_runs(folder: Path) -> dict[tuple[str, int], Path]:
    """``{(method, seed): run dir}`` of the completed training runs under ``folder``."""
    out = {}
    for rec in sorted(folder.glob("**/run.json")):
        info = json.loads(rec.read_text())
        if info.get("status") == "completed" and info.get("task") == "train":
            out[(str(info["method"]), int(info.get("seed", 0)))] = rec.parent
    return out


def need(runs: dict, method: str, seed: int, where: Path) -> Path:
    if (method, seed) not in runs:
        raise RuntimeError(
            f"no completed {method} run for seed {seed} under {where}; run "
            f"`make reproduce-table1 SEEDS=...` (or the stage that trains it) first"
        )
    return runs[(method, seed)]


TEST_SUBSET: int | None = None  # --test-subset: fewer test images (quick checks)


def test_images() -> tuple[np.ndarray, np.ndarray]:
    """The official Fashion-MNIST test set: ``(N, 1, 28, 28)`` uint8 images and labels."""
    from mrl.data import FashionMNISTDataModule

    dm = FashionMNISTDataModule(val_size=1000, test_subset=TEST_SUBSET)
    ds = dm.dataset("test")
    return ds.images[ds.indices].numpy(), ds.targets.numpy()


@torch.no_grad()
def forward(
    module, images: np.ndarray, batch: int = 1000
) -> tuple[dict[int, np.ndarray], np.ndarray]:
    """``({m: predicted class}, embeddings)`` of uint8 images, normalised as in training."""
    from mrl.data.fashion_mnist import MEAN, STD

    module.eval()
    preds: dict[int, list[np.ndarray]] = {}
    embs = []
    for i in range(0, len(images), batch):
        x = torch.from_numpy(images[i : i + batch]).float() / 255.0
        x = (x - MEAN[0]) / STD[0]
        z = module.embed(x)
        embs.append(z.numpy())
        for m, logits in module.net.head(z).items():  # one backbone pass for both
            preds.setdefault(m, []).append(logits.argmax(1).numpy())
    return {m: np.concatenate(v) for m, v in preds.items()}, np.concatenate(embs)


def one_nn(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y, dims) -> dict:
    """``{m: 1-NN accuracy}`` (cosine on L2-normalised prefixes)."""
    from mrl.eval.search import prefix_neighbors

    nb = prefix_neighbors(train_x, test_x, dims, k=1)
    return {m: float(np.mean(train_y[idx[:, 0]] == test_y)) for m, (_, idx) in nb.items()}


# --------------------------------------------------------------------------- tables
def write_outputs(
    name: str, rows: list[dict], out: Path, columns: Sequence[str], title: str, claims, notes
) -> list[Path]:
    """``<name>_fashion_mnist.{csv,md,png}``: every row in the CSV; one Markdown table per
    ``table`` value of the rows (methods as columns, mean ± std over seeds)."""
    from mrl.claims import judge_claims
    from mrl.results import plot_table, summarize, to_markdown

    stem = out / f"{name}_fashion_mnist"
    out.mkdir(parents=True, exist_ok=True)
    with open(stem.with_suffix(".csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(columns), extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    parts = [f"# {title}", ""]
    for table in dict.fromkeys(r["table"] for r in rows):
        sub = [dict(r, top1=r["value"]) for r in rows if r["table"] == table]
        md = to_markdown(sub, table)
        parts += ["#" + md.split("\n", 1)[0], md.split("\n", 1)[1]]
        if table in claims:
            parts.append(
                judge_claims(claims[table], summarize(sub), sorted({r["dim"] for r in sub}))
            )
    parts += [*notes]
    stem.with_suffix(".md").write_text("\n".join(parts) + "\n")
    first = next(iter(dict.fromkeys(r["table"] for r in rows)))
    sub = [dict(r, top1=r["value"]) for r in rows if r["table"] == first]
    plot_table(sub, stem.with_suffix(".png"), f"{title}: {first}", "accuracy (%)")
    return [stem.with_suffix(s) for s in (".csv", ".md", ".png")]


def pct(v: float) -> float:
    return round(100.0 * float(v), 2)


# --------------------------------------------------------------------------- experiments
def interpolation(seeds: list[int], out: Path) -> list[dict]:
    from mrl.eval.cache import load_embeddings
    from mrl.run.layout import RunDir
    from mrl.tasks.evaluate import load_module

    where = out / "runs" / EXPERIMENT / "mrl"
    runs = completed_runs(where)
    dims = sorted(DIMS + INTERPOLATED)
    rows = []
    for seed in seeds:
        for method in ("MRL", "MRL-E"):
            run = need(runs, method, seed, where)
            arr = load_embeddings(RunDir(run).embeddings)
            acc = one_nn(arr["train_x"], arr["train_y"], arr["test_x"], arr["test_y"], dims)
            for m in dims:
                rows.append(
                    {
                        "table": "1-NN accuracy",
                        "method": method,
                        "dim": m,
                        "seed": seed,
                        "value": pct(acc[m]),
                        "trained": m in DIMS,
                    }
                )
                if m in INTERPOLATED:  # the next smaller trained size, for the claim
                    below = max(d for d in DIMS if d < m)
                    rows.append(
                        {
                            "table": "1-NN accuracy",
                            "method": f"{method}, next smaller trained size",
                            "dim": m,
                            "seed": seed,
                            "value": pct(acc[below]),
                            "trained": False,
                        }
                    )
            if method == "MRL-E":  # the shared classifier reads any prefix
                module = load_module(RunDir(run).last_ckpt)
                w = module.net.head.shared.weight.detach().double().numpy()
                b = module.net.head.shared.bias.detach().double().numpy()
                z = np.asarray(arr["test_x"], dtype=np.float64)
                for m in dims:
                    pred = (z[:, :m] @ w[:, :m].T + b).argmax(1)
                    rows.append(
                        {
                            "table": "top-1 (MRL-E shared classifier)",
                            "method": "MRL-E",
                            "dim": m,
                            "seed": seed,
                            "value": pct(np.mean(pred == arr["test_y"])),
                            "trained": m in DIMS,
                        }
                    )
    return rows


def robustness(seeds: list[int], out: Path) -> list[dict]:
    from mrl.eval.cache import load_embeddings
    from mrl.run.layout import RunDir
    from mrl.shifts import suite
    from mrl.tasks.evaluate import load_module

    images, labels = test_images()
    shifted = {"clean": images, **suite(images, seed=0)}
    rows = []
    for seed in seeds:
        runs = completed_runs(out / "runs" / EXPERIMENT)
        models = {"MRL": need(runs, "MRL", seed, out / "runs" / EXPERIMENT)}
        models |= {f"FF-{m}": runs[(f"FF-{m}", seed)] for m in DIMS if (f"FF-{m}", seed) in runs}
        for name, run in models.items():
            module = load_module(RunDir(run).last_ckpt)
            arr = load_embeddings(RunDir(run).embeddings)
            method = "MRL" if name == "MRL" else "FF"
            dims = DIMS if name == "MRL" else [int(name.split("-")[1])]
            for shift, x in shifted.items():
                preds, emb = forward(module, x)
                nn1 = one_nn(arr["train_x"], arr["train_y"], emb, labels, dims)
                sev = "clean" if shift == "clean" else f"severity {shift.split('-')[1]}"
                for m in dims:
                    for table, v in (("top-1", np.mean(preds[m] == labels)), ("1-NN", nn1[m])):
                        rows.append(
                            {
                                "table": f"{table}, {sev}",
                                "method": method,
                                "dim": m,
                                "seed": seed,
                                "shift": shift,
                                "value": pct(v),
                            }
                        )
    # one value per (table, method, dim, seed): the mean over the corruption kinds
    agg: dict[tuple, list[float]] = {}
    for r in rows:
        agg.setdefault((r["table"], r["method"], r["dim"], r["seed"]), []).append(r["value"])
    means = [
        {
            "table": t,
            "method": meth,
            "dim": m,
            "seed": s,
            "shift": "mean over kinds",
            "value": round(float(np.mean(v)), 2),
        }
        for (t, meth, m, s), v in agg.items()
    ]
    return means + [
        dict(r, table=f"{r['table']} ({r['shift']})") for r in rows if r["shift"] != "clean"
    ]


SHORTLIST_DIMS = [8, 16, 32, 64]


def adaptive(seeds: list[int], out: Path) -> list[dict]:
    """Adaptive classification (Figure 6) and funnel retrieval (Table 3) from the Table 1 MRL
    runs' cached embeddings and trained heads.

    * Classification: the confidence cascade (thresholds learnt on the validation split,
      :func:`mrl.eval.adaptive.adaptive_classification_curve`); at every trained size m the
      best test top-1 whose *expected* dims are at most m, against the fixed prefix m.
    * Retrieval (database = the training split, queries = the test set): a shortlist of 200
      at D_s in 8..64 reranked at the full width, against exact search at the full width:
      mAP@10, the theoretical FLOP ratio and the measured speed-up (median of 3, same process).
    """
    from mrl.eval.adaptive import (
        adaptive_classification,
        adaptive_classification_curve,
        adaptive_retrieval,
    )
    from mrl.eval.cache import load_embeddings
    from mrl.eval.linear import head_logits
    from mrl.run.layout import RunDir
    from mrl.tasks.evaluate import load_module

    where = out / "runs" / EXPERIMENT / "mrl"
    runs = completed_runs(where)
    rows = []
    for seed in seeds:
        run = need(runs, "MRL", seed, where)
        arr = load_embeddings(RunDir(run).embeddings)
        if "val_x" not in arr:
            raise RuntimeError(f"{run}: the embedding cache has no validation split")
        module = load_module(RunDir(run).last_ckpt)
        val, test = head_logits(module, arr["val_x"]), head_logits(module, arr["test_x"])
        curve = adaptive_classification_curve(val, arr["val_y"], test, arr["test_y"])
        dims = sorted(test)
        for m in dims:
            fixed = float(np.mean(test[m].argmax(1) == arr["test_y"]))
            within = [pt["top1"] for pt in curve if pt["expected_dim"] <= m]
            cells = [("MRL, fixed size", fixed)]
            if within:  # else no operating point fits this budget: the cell stays empty
                cells.append(("MRL, adaptive", max(within)))
            for method, v in cells:
                rows.append(
                    {
                        "table": "top-1 at expected dims <= size",
                        "method": method,
                        "dim": m,
                        "seed": seed,
                        "value": pct(v),
                    }
                )
        headline = adaptive_classification(val, arr["val_y"], test, arr["test_y"])
        rows.append(
            {
                "table": "expected dims to reach the largest size's top-1 (-0.5 points)",
                "method": "MRL, adaptive",
                "dim": dims[-1],
                "seed": seed,
                "value": round(headline["adaptive_cls/dim_to_match"], 1),
            }
        )
        width = int(arr["train_x"].shape[1])
        for ds in SHORTLIST_DIMS:
            r = adaptive_retrieval(
                arr["train_x"],
                arr["train_y"],
                arr["test_x"],
                arr["test_y"],
                d_shortlist=ds,
                d_rerank=width,
                shortlist_k=200,
                k=10,
                repeats=3,
            )
            for table, method, v in (
                ("retrieval mAP@10 (%)", f"funnel {ds} -> {width}", pct(r["adaptive_ret/mAP@10"])),
                ("retrieval mAP@10 (%)", f"exact {width}", pct(r["adaptive_ret/exact_mAP@10"])),
                (
                    "retrieval speed-up vs exact (x)",
                    "FLOPs",
                    round(r["adaptive_ret/flops_ratio"], 2),
                ),
                (
                    "retrieval speed-up vs exact (x)",
                    "wall-clock",
                    round(r["adaptive_ret/speedup"], 2),
                ),
            ):
                rows.append(
                    {
                        "table": table,
                        "method": method.split(" ")[0] if "mAP" in table else method,
                        "dim": ds,
                        "seed": seed,
                        "value": v,
                    }
                )
    return rows


def train_mrl_and_ff(label: str, runs_dir: Path, common: list[str]) -> list[str]:
    """MRL and FF-k for every k of :data:`DIMS` (two Hydra multiruns); the failed ones."""
    ff = ["method=ff", "mrl.ff_dim=" + ",".join(map(str, DIMS))]
    failed = []
    for name, folder, args in (("MRL", "mrl", ["mrl.efficient=false"]), ("FF-k", "ff", ff)):
        if train_sweep(f"{label}: {name}", runs_dir / folder, EXPERIMENT, [*args, *common]):
            failed.append(f"{label} {name}")
    return failed


def novel(seeds: list[int], out: Path, overrides: list[str]) -> tuple[list[dict], list[str]]:
    name = "novel_fashion_mnist"
    runs_dir = out / "runs" / name
    common = [
        "data.train_classes=[" + ",".join(map(str, BASE)) + "]",
        "eval=[fewshot]",
        "eval.fewshot.ways=5",
        "eval.fewshot.heldout_classes=[" + ",".join(map(str, NOVEL)) + "]",
        "seed=" + ",".join(map(str, seeds)),
        f"task_name={name}",
        *overrides,
    ]
    failed = train_mrl_and_ff("novel", runs_dir, common)
    runs = completed_runs(runs_dir)
    rows = []
    for seed in seeds:
        for m in DIMS:
            for method, run in (
                ("MRL", runs.get(("MRL", seed))),
                ("FF", runs.get((f"FF-{m}", seed))),
            ):
                if run is None:
                    continue
                metrics = json.loads((run / "metrics.json").read_text())
                for shots in (1, 5):
                    v = metrics.get(f"fewshot_heldout/5way{shots}shot@d{m}")
                    if v is not None:
                        rows.append(
                            {
                                "table": f"novel classes, 5-way {shots}-shot",
                                "method": method,
                                "dim": m,
                                "seed": seed,
                                "value": pct(v),
                            }
                        )
    return rows, failed


def longtail(seeds: list[int], out: Path, overrides: list[str]) -> tuple[list[dict], list[str]]:
    from mrl.data import FashionMNISTDataModule
    from mrl.run.layout import RunDir
    from mrl.tasks.evaluate import load_module

    name = "longtail_fashion_mnist"
    runs_dir = out / "runs" / name
    common = [
        "data.imbalance_ratio=100",
        f"trainer.max_epochs={LONGTAIL_EPOCHS}",
        "seed=" + ",".join(map(str, seeds)),
        f"task_name={name}",
        *overrides,
    ]
    failed = train_mrl_and_ff("long-tail", runs_dir, common)
    runs = completed_runs(runs_dir)
    images, labels = test_images()
    rows = []
    for seed in seeds:
        groups = FashionMNISTDataModule(imbalance_ratio=100, seed=seed).class_groups()
        for name_, run in sorted(runs.items()):
            method, s = name_
            if s != seed:
                continue
            preds, _ = forward(load_module(RunDir(run).last_ckpt), images)
            for m, p in preds.items():
                if method.startswith("FF-") and m != int(method.split("-")[1]):
                    continue
                for group, classes in (("all", list(range(10))), *groups.items()):
                    sel = np.isin(labels, classes)
                    rows.append(
                        {
                            "table": f"top-1, {group} classes",
                            "method": method.split("-")[0],
                            "dim": m,
                            "seed": seed,
                            "value": pct(np.mean(p[sel] == labels[sel])),
                        }
                    )
    return rows, failed


COLUMNS = ["table", "method", "dim", "seed", "value"]
EXPERIMENTS: dict[str, dict] = {
    "interpolation": {
        "run": interpolation,
        "columns": [*COLUMNS, "trained"],
        "title": "Interpolation: untrained sizes between trained ones",
        "claims": [
            Claim(
                f"{m} at a size never trained is as accurate as at the next smaller trained size",
                m,
                f"{m}, next smaller trained size",
                ">=",
                tuple(INTERPOLATED),
            )
            for m in ("MRL", "MRL-E")
        ],
        "judged": lambda r: r["table"] == "1-NN accuracy",
        "notes": ["Sizes 12, 24, 48, 96 and 192 were never trained (no loss term, no head)."],
    },
    "robustness": {
        "run": robustness,
        "columns": [*COLUMNS[:4], "shift", "value"],
        "title": "Robustness: MRL vs FF on a corrupted test set",
        "claims": [Claim("MRL is at least as robust as FF at every size", "MRL", "FF")],
        "judged": lambda r: r["shift"] == "mean over kinds",
        "notes": ["Severity tables: mean over the five corruption kinds; per-kind tables follow."],
    },
    "adaptive": {
        "run": adaptive,
        "columns": COLUMNS,
        "title": "Adaptive classification and funnel retrieval (MRL, Table 1 runs)",
        "claims": [
            Claim(
                "the cascade is at least as accurate as the fixed size at the same expected dims",
                "MRL, adaptive",
                "MRL, fixed size",
                ">=",
            ),
            Claim(
                "a shortlist at D_s reranked at full width matches exact full-width mAP@10",
                "funnel",
                "exact",
                ">=",
            ),
        ],
        "judged": lambda r: "mAP" in r["table"] or r["table"].startswith("top-1"),
        "notes": [
            "Classification: thresholds learnt on the 1,000 validation images; `dim` is the "
            "budget in expected dims (mean answering prefix over the test set); an empty "
            "adaptive cell: no operating point of that seed fits the budget. 'Expected dims to "
            "reach': the smallest expected dims whose top-1 is within 0.5 points of the "
            "largest fixed size (the paper's Figure 6 reading).",
            "Retrieval: database = the 20,000 training images, queries = the 10,000 test "
            "images; `dim` is the shortlist size D_s (K = 200), reranked at the full width; "
            "wall-clock: median of 3 interleaved runs in one process (FAISS exact search). At "
            "20,000 database vectors exact search is one BLAS product, cheaper than the "
            "funnel's gather and rerank; `make bench` (adaptive_1m) measures 1M vectors.",
        ],
    },
    "novel": {
        "run": novel,
        "columns": COLUMNS,
        "title": "Novel-class few-shot",
        "claims": [Claim("MRL matches or beats FF on novel classes at every size", "MRL", "FF")],
        "judged": lambda r: True,
        "notes": [f"Trained on classes {BASE}; episodes over the novel classes {NOVEL}."],
    },
    "longtail": {
        "run": longtail,
        "columns": COLUMNS,
        "title": "Long-tail (FLUID-style)",
        "claims": [Claim("MRL matches or beats FF on these classes at every size", "MRL", "FF")],
        "judged": lambda r: True,
        "notes": [
            "Training set: imbalance ratio 100, seeded exponential profile (14.6k images; the "
            f"rarest class 59), {LONGTAIL_EPOCHS} epochs: as many images seen as Table 1's "
            "networks; test balanced."
        ],
    },
}


def table_claims(spec: dict, rows: list[dict]) -> dict[str, list[Claim]]:
    """Each judged table's claims: those whose two methods the table shows."""
    out = {}
    for t in dict.fromkeys(r["table"] for r in rows if spec["judged"](r)):
        methods = {r["method"] for r in rows if r["table"] == t}
        out[t] = [c for c in spec["claims"] if {c.a, c.b} <= methods]
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--only", default="interpolation,robustness,adaptive,novel,longtail")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--out", default="results")
    p.add_argument(
        "--test-subset", type=int, default=None, help="robustness/long-tail: N test images"
    )
    p.add_argument("overrides", nargs="*", help="Hydra overrides for the training jobs")
    a = p.parse_args(argv)
    which = a.only.split(",")
    bad = [w for w in which if w not in EXPERIMENTS]
    try:
        seeds = [int(s) for s in a.seeds.split(",")]
    except ValueError:
        seeds = []
    if bad or not seeds:
        print(
            f"error: --only={a.only!r} / --seeds={a.seeds!r}: use names from "
            f"{','.join(EXPERIMENTS)} and integer seeds, e.g. --seeds 0,1,2",
            file=sys.stderr,
        )
        return 2
    global TEST_SUBSET
    TEST_SUBSET = a.test_subset
    out = Path(a.out) if Path(a.out).is_absolute() else ROOT / a.out
    failures: list[str] = []
    for exp in which:
        spec = EXPERIMENTS[exp]
        t = time.time()
        try:
            if exp in ("novel", "longtail"):
                rows, failed = spec["run"](seeds, out, a.overrides)
                failures += failed
            else:
                rows = spec["run"](seeds, out)
            files = write_outputs(
                exp,
                rows,
                out,
                spec["columns"],
                spec["title"],
                table_claims(spec, rows),
                spec["notes"],
            )
            print(f"== {exp}: {', '.join(str(f) for f in files)} in {time.time() - t:.0f} s")
        except Exception as e:  # noqa: BLE001 - reported, counted, the other experiments run
            print(f"== {exp} failed: {e}", file=sys.stderr)
            failures.append(exp)
    if failures:
        print(f"failed stages: {', '.join(failures)}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
