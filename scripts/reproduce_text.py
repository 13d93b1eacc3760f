"""Matryoshka text embeddings on WordNet 3.0 (issue #14): plain truncation vs. MRL fine-tuning.

    python scripts/reproduce_text.py [--out results] [--no-train] [-- Hydra overrides]

1. Plain truncation: all-MiniLM-L6-v2 as released (no training), its first m dims for m in
   12..384, on the WordNet test split of ``experiment=text_wordnet`` (2,000 held-out synsets;
   every lemma-name and example query against all 2,000 glosses).
2. MRL fine-tune: ``train.py experiment=text_wordnet`` (nested InfoNCE over the same prefixes),
   tested on the same split (its ``metrics.json``). Resumable: a finished run is reused.
3. ``<out>/text_wordnet.{md,json}``: nDCG@10 and R@10 per prefix for both, and whether the
   48-dim prefix keeps >= 95% of the same model's full-width nDCG@10.

Both measurements use the same data, prefixes, tokenisation (``model.max_seq_length``) and
metric code (:mod:`mrl.eval.text_retrieval` through the objective's test step).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENT = "text_wordnet"
KEEP_DIM, KEEP_FRACTION = 48, 0.95


def compose(out_dir: Path, overrides: list[str]):
    """The experiment's training config, as train.py would compose it."""
    from hydra import compose as hcompose
    from hydra import initialize_config_dir

    from mrl.cli import register_resolvers

    register_resolvers()
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        return hcompose(
            "train",
            overrides=[
                f"experiment={EXPERIMENT}",
                f"paths.output_dir={out_dir}",
                f"paths.root_dir={ROOT}",
                *overrides,
            ],
        )


def plain_truncation(out_dir: Path, overrides: list[str]) -> tuple[dict[str, float], list[int]]:
    """Test metrics of the untrained model (every prefix a plain truncation)."""
    import pytorch_lightning as pl

    from mrl.tasks.train import build_datamodule, build_module

    cfg = compose(out_dir, overrides)
    pl.seed_everything(int(cfg.seed), verbose=False)
    dm = build_datamodule(cfg)
    module = build_module(cfg, dm)
    trainer = pl.Trainer(
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.test(module, datamodule=dm, verbose=False)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("test/")}
    return metrics, list(module.dims)


def fine_tune(run_dir: Path, overrides: list[str]) -> tuple[dict[str, float], float]:
    """``train.py experiment=text_wordnet`` into ``run_dir`` (reused when complete)."""
    cmd = [
        sys.executable,
        str(ROOT / "train.py"),
        f"experiment={EXPERIMENT}",
        f"hydra.run.dir={run_dir}",
        "ckpt_path=auto",
        *overrides,
    ]
    print("+", " ".join(cmd), flush=True)
    t = time.time()
    code = subprocess.call(cmd, cwd=ROOT, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    if code != 0:
        raise SystemExit(f"error: the fine-tuning run failed (exit {code}); see {run_dir}")
    return json.loads((run_dir / "metrics.json").read_text()), time.time() - t


def keeps(metrics: dict[str, float], dims: list[int]) -> dict[str, float | bool]:
    """nDCG@10 at :data:`KEEP_DIM` as a fraction of the same model's full-width nDCG@10."""
    small, full = metrics[f"test/nDCG@10@d{KEEP_DIM}"], metrics[f"test/nDCG@10@d{dims[-1]}"]
    ratio = small / full if full > 0 else 0.0
    return {"ratio": ratio, "keeps": ratio >= KEEP_FRACTION}


def table(rows: dict[str, dict[str, float]], dims: list[int]) -> str:
    names = list(rows)
    head = "| dim | " + " | ".join(f"{n} nDCG@10 | {n} R@10" for n in names) + " |"
    lines = [head, "|" + "---|" * (1 + 2 * len(names))]
    for m in dims:
        cells = [
            f"{100 * rows[n][f'test/nDCG@10@d{m}']:.2f} | {100 * rows[n][f'test/R@10@d{m}']:.2f}"
            for n in names
        ]
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra: list[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, extra = argv[:i], argv[i + 1 :]
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="results", help="output folder (run dirs under runs/)")
    p.add_argument("--no-train", action="store_true", help="only the plain-truncation baseline")
    args = p.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    out = (ROOT / args.out).resolve() if not Path(args.out).is_absolute() else Path(args.out)
    runs = out / "runs" / EXPERIMENT
    runs.mkdir(parents=True, exist_ok=True)

    t = time.time()
    base, dims = plain_truncation(runs / "plain_truncation", extra)
    result: dict = {
        "experiment": EXPERIMENT,
        "overrides": extra,
        "dims": dims,
        "plain_truncation": {"metrics": base, "seconds": round(time.time() - t, 1)},
    }
    rows = {"plain truncation": base}
    result["plain_truncation"][f"d{KEEP_DIM}_of_full"] = keeps(base, dims)
    if not args.no_train:
        tuned, secs = fine_tune(runs / "mrl_finetune", extra)
        run = json.loads((runs / "mrl_finetune" / "run.json").read_text())
        result["mrl_finetune"] = {
            "metrics": {k: v for k, v in tuned.items() if k.startswith("test/")},
            "seconds": round(secs, 1),
            "global_step": run.get("global_step"),
            f"d{KEEP_DIM}_of_full": keeps(tuned, dims),
        }
        rows["MRL fine-tune"] = tuned
    text = [
        f"# Matryoshka text embeddings on WordNet 3.0 ({EXPERIMENT})",
        "",
        "all-MiniLM-L6-v2; test split: every lemma-name / example query of the held-out synsets "
        "against all of their glosses (one relevant gloss per query); values in %.",
        "",
        table(rows, dims),
        "",
    ]
    for name, key in (("plain truncation", "plain_truncation"), ("MRL fine-tune", "mrl_finetune")):
        if key in result:
            k = result[key][f"d{KEEP_DIM}_of_full"]
            text.append(
                f"- {name}: d{KEEP_DIM} keeps {100 * k['ratio']:.1f}% of its own d{dims[-1]} "
                f"nDCG@10 ({'>=' if k['keeps'] else '<'} {100 * KEEP_FRACTION:.0f}%)"
                + (
                    f"; {result[key]['global_step']} steps in {result[key]['seconds']:.0f} s"
                    if key == "mrl_finetune"
                    else ""
                )
            )
    (out / f"{EXPERIMENT}.json").write_text(json.dumps(result, indent=2))
    (out / f"{EXPERIMENT}.md").write_text("\n".join(text) + "\n")
    print("\n".join(text))
    print(f"written: {out / f'{EXPERIMENT}.md'}, {out / f'{EXPERIMENT}.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
