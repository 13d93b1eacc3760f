"""``eval.py ckpt_path=`` on text and image-text runs (issue #14): a real 3-step
``experiment=text_wordnet`` run is evaluated per prefix through the encoder door and gives the
metrics (and embeddings) that ``encoder=sentence_transformers`` gives for the same weights
exported with ``mrl-export``; a real 3-step ``experiment=align_fashion_mnist`` run gives its
training run's own test metrics; other objectives are refused in one line."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from mrl.core.errors import MRLError
from mrl.eval.cache import load_embeddings
from mrl_test_utils import compose_cfg, run_cli_cases

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

TEXT_DIMS = [12, 24, 48, 96, 192, 384]
ALIGN_DIMS = [8, 16, 32, 64, 128, 256]
SLIMMABLE = "mrl.objectives.slimmable.SlimmableLitModule"


def _train(out: Path, *overrides: str) -> Path:
    """A real training run into ``out``, with the ``.hydra/config.yaml`` the CLI writes."""
    from omegaconf import OmegaConf

    from mrl.tasks.train import train

    cfg = compose_cfg("train", out, "logger=csv", *overrides)
    train(cfg)
    (out / ".hydra").mkdir(exist_ok=True)
    OmegaConf.save(cfg, out / ".hydra" / "config.yaml")
    return out


def _fake_slimmable(folder: Path, with_run_dir: bool) -> Path:
    """A checkpoint with a slimmable network's hyper-parameters (optionally in a run dir
    whose config names the objective)."""
    ckpt = folder / "checkpoints" / "last.ckpt"
    ckpt.parent.mkdir(parents=True)
    hp = {"arch": "resnet18", "width_mults": [0.25, 1.0], "dims": "auto", "optim": {}}
    torch.save({"state_dict": {}, "hyper_parameters": hp}, ckpt)
    if with_run_dir:
        (folder / ".hydra").mkdir()
        (folder / ".hydra" / "config.yaml").write_text(f"objective:\n  _target_: {SLIMMABLE}\n")
    return ckpt


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Both runs trained here, the text run exported, then every eval.py case in one
    subprocess (``{name: result}``, the paths)."""
    from mrl.export import main as export

    tmp = tmp_path_factory.mktemp("evalckpt")
    text = _train(
        tmp / "text",
        "experiment=text_wordnet",
        "data.max_synsets=120",
        "data.val_size=0.1",
        "data.test_size=0.2",
        "data.batch_size=16",
        "model.max_seq_length=16",
        "trainer.limit_train_batches=3",
        "optim.lr=1e-4",
    )
    align = _train(
        tmp / "align",
        "experiment=align_fashion_mnist",
        "data.subset=128",
        "data.val_size=32",
        "data.test_subset=96",
        "data.batch_size=32",
        "model.channels=[16,32,64,128]",
        "trainer.limit_train_batches=3",
    )
    exported = tmp / "exported"
    export([str(text), "--out", str(exported)])
    fakes = [_fake_slimmable(tmp / f"fake{i}", with_run_dir=bool(i)) for i in (0, 1)]
    paths = {"text": text, "align": align, "exported": exported, "fakes": fakes, "tmp": tmp}

    def case(name: str, *args: str) -> tuple:
        return (name, "eval.py", [*args, "logger=csv", f"hydra.run.dir={tmp / name}"], {})

    cases = [
        case("text_ckpt", f"ckpt_path={text}/checkpoints/last.ckpt"),
        case(
            "text_st",
            "encoder=sentence_transformers",
            f"encoder.name={exported}",
            "data=wordnet",
            "data.max_synsets=120",
            "data.val_size=0.1",
            "data.test_size=0.2",
        ),
        case("align_ckpt", f"ckpt_path={align}/checkpoints/last.ckpt"),
        case("text_on_images", f"ckpt_path={text}/checkpoints/last.ckpt", "data=fashion_mnist"),
        *(case(f"fake{i}", f"ckpt_path={f}") for i, f in enumerate(fakes)),
    ]
    return run_cli_cases(cases, tmp / "cli"), paths


def _json(path: Path) -> dict:
    return json.loads(path.read_text())


@pytest.mark.slow
def test_text_checkpoint_is_evaluated_per_prefix_like_its_sentence_transformers_export(runs):
    res, paths = runs
    for name in ("text_ckpt", "text_st"):
        assert res[name]["code"] == 0, (name, res[name]["stderr"][-3000:])
    out, st_out = paths["tmp"] / "text_ckpt", paths["tmp"] / "text_st"
    got, st = _json(out / "metrics.json"), _json(st_out / "metrics.json")
    for m in TEXT_DIMS:
        r1, r10 = got[f"text_retrieval/R@1@d{m}"], got[f"text_retrieval/R@10@d{m}"]
        mrr, ndcg = got[f"text_retrieval/MRR@10@d{m}"], got[f"text_retrieval/nDCG@10@d{m}"]
        assert 0 <= r1 <= mrr <= ndcg <= r10 <= 1, m
    assert got["text_retrieval/nDCG@10@d384"] > got["text_retrieval/nDCG@10@d12"]
    # the two doors agree: same keys, same values, same embeddings
    assert sorted(got) == sorted(st)
    for k in got:
        assert abs(got[k] - st[k]) <= 1e-6, (k, got[k], st[k])
    a, b = load_embeddings(out / "embeddings"), load_embeddings(st_out / "embeddings")
    for k in ("train_x", "train_y", "test_x", "test_y"):
        np.testing.assert_allclose(a[k], b[k], rtol=0, atol=1e-6, err_msg=k)
    # and the training run's own test pass (its TextEncoder, other batches): one query at most
    train = _json(paths["text"] / "metrics.json")
    for m in TEXT_DIMS:
        for name in ("R@1", "R@10", "MRR@10", "nDCG@10"):
            tol = 1.0 / len(a["test_y"]) + 1e-6
            assert abs(got[f"text_retrieval/{name}@d{m}"] - train[f"test/{name}@d{m}"]) <= tol
    ckpt = paths["text"] / "checkpoints" / "last.ckpt"
    record = _json(out / "run.json")
    assert record["status"] == "completed" and record["task"] == "eval"
    assert record["method"] == "MRL" and record["dims"] == TEXT_DIMS
    assert Path(record["ckpt"]).resolve() == ckpt.resolve()
    enc = record["encoder"]
    assert enc["kind"] == "checkpoint" and Path(enc["ckpt"]) == ckpt.resolve()
    assert enc["ckpt_fingerprint"] and enc["width"] == 384
    assert record["evaluators"] == ["text_retrieval"]
    assert (out / "plots" / "metric_vs_dim.png").is_file()


@pytest.mark.slow
def test_image_text_checkpoint_gives_its_training_runs_test_metrics(runs):
    res, paths = runs
    r = res["align_ckpt"]
    assert r["code"] == 0, r["stderr"][-3000:]
    out = paths["tmp"] / "align_ckpt"
    got, train = _json(out / "metrics.json"), _json(paths["align"] / "metrics.json")
    names = [f"{d}_R@{k}" for d in ("i2t", "t2i") for k in (1, 5, 10)]
    names += ["zeroshot_top1", "knn_top1", "knn_top5"]
    for m in ALIGN_DIMS:
        for n in names:
            key = f"test/{n}@d{m}"
            assert 0 <= got[key] <= 1, key
            assert abs(got[key] - train[key]) <= 1e-6, (key, got[key], train[key])
        for d in ("i2t", "t2i"):
            assert got[f"test/{d}_R@1@d{m}"] <= got[f"test/{d}_R@5@d{m}"]
            assert got[f"test/{d}_R@5@d{m}"] <= got[f"test/{d}_R@10@d{m}"]
        assert 0 < got[f"test/knn_top1@d{m}"] <= got[f"test/knn_top5@d{m}"]
    record = _json(out / "run.json")
    assert record["status"] == "completed" and record["method"] == "MRL"
    assert record["dims"] == ALIGN_DIMS and record["evaluators"] == ["image_text"]
    assert Path(record["ckpt"]).resolve() == (paths["align"] / "checkpoints/last.ckpt").resolve()
    assert (out / "plots" / "metric_vs_dim.png").is_file()
    assert "test/i2t_R@1" in r["stdout"] and "per-prefix metrics" in r["stdout"]


@pytest.mark.slow
def test_checkpoints_eval_cannot_evaluate_are_one_line(runs):
    res, paths = runs
    expect = {
        "fake0": "an objective with hyper-parameters ['arch', 'width_mults']",
        "fake1": f"objective._target_={SLIMMABLE}",
        "text_on_images": "holds a text model but data 'fashion_mnist' is images",
    }
    for name, match in expect.items():
        r = res[name]
        err = r["stderr"]
        assert r["code"] == 2 and "Traceback" not in err, (name, err[-3000:])
        lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
        assert len(lines) == 1 and match in lines[0], (name, err[-3000:])
        if name.startswith("fake"):
            assert "cannot evaluate" in lines[0] and "objective=image_text" in lines[0]
    from mrl.tasks.evaluate import load_module

    with pytest.raises(MRLError, match="holds a text model, not an image classification"):
        load_module(paths["text"] / "checkpoints" / "last.ckpt")
