"""``scripts/reproduce_adaptor.py`` (#17 item 5) at small sizes: real runs, the CSV checked
against the runs' metrics.json and an independent bytes formula, the "within 1 point" line
recomputed from the CSV, resumption, and the text-model export it evaluates MRL text with."""

from __future__ import annotations

import csv
import json
import math
import os
import re
import sys

import numpy as np
import pytest
import torch

from mrl_test_utils import ROOT, run_cli

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(ROOT / "scripts"))

import reproduce_adaptor as ra  # noqa: E402

SCRIPT = "scripts/reproduce_adaptor.py"


def _bytes(m: int, precision: str) -> int:
    return {"float32": 4 * m, "float16": 2 * m, "int8": m, "binary": math.ceil(m / 8)}[precision]


def _read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _check_outputs(out, task: str, methods: set[str], runs: dict[str, tuple[str, str]]):
    """Columns, every (method, dim, precision) cell, values = the run's metrics.json x 100,
    bytes by the formula, and the markdown's smallest-within-1-point line per method."""
    rows = _read_csv(out / f"adaptor_{task}.csv")
    assert list(rows[0]) == ["method", "task", "metric", "dim", "precision", "bytes", "value"]
    assert {r["method"] for r in rows} == methods and {r["task"] for r in rows} == {task}
    main = ra.TASKS[task][0]
    dims = sorted({int(r["dim"]) for r in rows})
    for r in rows:
        assert int(r["bytes"]) == _bytes(int(r["dim"]), r["precision"])
    for method in methods:
        have = {
            (int(r["dim"]), r["precision"])
            for r in rows
            if r["method"] == method and r["metric"] == main
        }
        want_dims = dims if method != "pca" else [d for d in dims if (d, "float32") in have]
        assert have == {(d, p) for d in want_dims for p in ra.PRECISIONS}, method
        run_dir, suffix = runs[method]
        metrics = json.loads((out / "runs" / "adaptor" / run_dir / "metrics.json").read_text())
        for r in rows:
            if r["method"] != method:
                continue
            key = f"{r['metric']}@d{r['dim']}{suffix}"
            key += "" if r["precision"] == "float32" else f"/{r['precision']}"
            assert float(r["value"]) == pytest.approx(100 * metrics[key], abs=0.006), key
    md = (out / f"adaptor_{task}.md").read_text()
    for method in methods:
        own = [r for r in rows if r["method"] == method and r["metric"] == main]
        base = "mrl" if method == "mrl" else "truncate"
        full = max(
            (
                r
                for r in rows
                if r["method"] == base and r["metric"] == main and r["precision"] == "float32"
            ),
            key=lambda r: int(r["dim"]),
        )
        ok = [r for r in own if float(r["value"]) >= float(full["value"]) - 1.0]
        if not ok:
            assert f"- {method}: none within 1 point" in md, method
            continue
        best = min(int(r["bytes"]) for r in ok)
        assert re.search(rf"^- {method}: {best} bytes \(", md, re.M), (method, best, md)
    assert (out / f"adaptor_{task}.png").stat().st_size > 5000


@pytest.mark.slow
def test_fashion_mnist_stage_small_and_resumed(tmp_path):
    """FF-512 and MRL trained on 300 images (one epoch), evaluated on 200 test images at every
    prefix x precision; truncate / pca / adaptor of FF and MRL's own prefixes; a second call
    reuses every run dir and writes the same CSV."""
    args = [SCRIPT, "--out", str(tmp_path), "--only", "fashion_mnist", "--subset", "300"]
    args += ["--test-subset", "200"]
    r = run_cli(*args, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    runs = {
        "truncate": ("fashion_mnist_ff_eval", ""),
        "pca": ("fashion_mnist_ff_eval", "/pca"),
        "adaptor": ("fashion_mnist_ff_eval", "/adaptor"),
        "mrl": ("fashion_mnist_mrl_eval", ""),
    }
    _check_outputs(tmp_path, "fashion_mnist", set(runs), runs)
    ff = json.loads((tmp_path / "runs/adaptor/fashion_mnist_ff/run.json").read_text())
    mrl = json.loads((tmp_path / "runs/adaptor/fashion_mnist_mrl/run.json").read_text())
    assert ff["method"] == "FF-512" and mrl["method"] == "MRL" and ff["dims"] == [512]
    assert "adaptor_fit_seconds" in (tmp_path / "adaptor_fashion_mnist.md").read_text()
    before = (tmp_path / "adaptor_fashion_mnist.csv").read_text()
    again = run_cli(*args, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.count("== reusing") == 4
    assert (tmp_path / "adaptor_fashion_mnist.csv").read_text() == before


@pytest.mark.slow
def test_minilm_stage_without_an_mrl_model(tmp_path):
    """The released MiniLM on ~150 WordNet test synsets: truncate, pca and adaptor at every
    prefix x precision; without a text_wordnet fine-tune the MRL column is absent and said so."""
    args = [
        SCRIPT,
        "--out",
        str(tmp_path),
        "--only",
        "minilm_wordnet",
        "--",
        "data.max_synsets=3000",
    ]
    r = run_cli(*args, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    runs = {b: ("minilm_wordnet", "" if b == "truncate" else f"/{b}") for b in ra.BASELINES}
    _check_outputs(tmp_path, "minilm_wordnet", set(ra.BASELINES), runs)
    md = (tmp_path / "adaptor_minilm_wordnet.md").read_text()
    assert "no MRL text model" in md


def test_text_checkpoint_exported_for_sentence_transformers(tmp_path):
    """``save_text_encoder``: a text_wordnet checkpoint's encoder saved as a transformers folder
    embeds, through sentence-transformers' mean pooling, as the checkpoint's own encoder."""
    from mrl.encoders import SentenceEncoder
    from mrl.objectives.contrastive import ContrastiveLitModule

    module = ContrastiveLitModule(model={"name": "minilm", "max_seq_length": 32}, dims=[48, 384])
    with torch.no_grad():  # move the weights away from the released model's
        module.net.model.embeddings.word_embeddings.weight.mul_(1.1)
    ckpt = tmp_path / "last.ckpt"
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams)}, ckpt)
    ra.save_text_encoder(ckpt, tmp_path / "model")
    texts = ["a small dog", "the act of running quickly", "bank", "financial institution"]
    enc = SentenceEncoder(str(tmp_path / "model"), max_seq_length=32)
    got = enc.encode(texts, "query")
    module.eval()
    with torch.no_grad():
        want = module.net(texts).numpy()
    np.testing.assert_allclose(got, want, atol=2e-5)
