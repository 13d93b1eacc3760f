"""``eval.py`` on text classification data (``data=wordnet data.task=classification``): every
split's glosses embedded once, the image evaluators (kNN, linear probe, ...) per prefix, through
both doors (``encoder=sentence_transformers`` and ``ckpt_path=`` of a real 3-step
``experiment=text_wordnet_cls`` run). References computed here without sentence-transformers:
the models run through :class:`mrl.models.text.TextEncoder` (``gloss_eval_data``), 1-NN and
DINO's weighted kNN by numpy brute force; retrieval and classification never share a cache."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from mrl.data.wordnet import CACHE_ROOT, WordNetDataModule
from mrl_test_utils import compose_cfg, run_cli_cases

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

SPLITS = {"max_synsets": 500, "val_size": 0.1, "test_size": 0.2}
DATA = ["data=wordnet", *(f"data.{k}={v}" for k, v in SPLITS.items())]
MINILM = ["encoder=sentence_transformers", "encoder.name=minilm", *DATA]
DIMS = [12, 48, 384]
K, T = 20, 0.07  # conf/eval/knn.yaml


def _dm() -> WordNetDataModule:
    return WordNetDataModule(task="classification", cache_dir=CACHE_ROOT.expanduser(), **SPLITS)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A tiny text_wordnet_cls run trained here, then every eval.py case in one subprocess."""
    from omegaconf import OmegaConf

    from mrl.tasks.train import train

    tmp = tmp_path_factory.mktemp("evaltextcls")
    trained = tmp / "trained"
    cfg = compose_cfg(
        "train",
        trained,
        "logger=csv",
        "experiment=text_wordnet_cls",
        *(f"data.{k}={v}" for k, v in SPLITS.items()),
        "data.batch_size=16",
        "model.max_seq_length=16",
        "trainer.limit_train_batches=3",
    )
    train(cfg)
    (trained / ".hydra").mkdir(exist_ok=True)
    OmegaConf.save(cfg, trained / ".hydra" / "config.yaml")
    shared = tmp / "shared"  # retrieval, then classification, in one run dir
    meta = [str(shared / "embeddings" / "meta.json")]

    def case(name: str, *args: str, run: Path | None = None) -> tuple:
        run = run or tmp / name
        return (name, "eval.py", [*args, "logger=csv", f"hydra.run.dir={run}"], {}, meta)

    cls = [*MINILM, "data.task=classification", f"dims={DIMS}"]
    cases = [
        case("ret", *MINILM, f"dims={DIMS}", run=shared),
        case("cls", *cls, "eval.precisions=[float32,binary]", "eval.baselines=[truncate,pca]"),
        case("cls_shared", *cls, run=shared),
        case("cls_shared_again", *cls, run=shared),
        case("ret_shared_again", *MINILM, f"dims={DIMS}", run=shared),
        case("ckpt", f"ckpt_path={trained}/checkpoints/last.ckpt", "dims=[12,48,384]"),
        case("mlm", *MINILM, "data.task=mlm"),
        case("fewshot", *cls, "eval=[knn,fewshot]"),
    ]
    return run_cli_cases(cases, tmp / "cli"), tmp


def _json(path: Path) -> dict:
    return json.loads(path.read_text())


def _arrays(run: Path) -> dict[str, np.ndarray]:
    return {f.stem: np.load(f) for f in (run / "embeddings").glob("*.npy")}


def _cosines(data, m: int) -> np.ndarray:
    """``(test, train)`` cosine similarities of the m-prefixes, float64."""
    a = data.train_x[:, :m].astype(np.float64)
    b = data.test_x[:, :m].astype(np.float64)
    return (b / np.linalg.norm(b, axis=1, keepdims=True)) @ (
        a / np.linalg.norm(a, axis=1, keepdims=True)
    ).T


def _knn_bounds(data, m: int, tol: float) -> dict[str, tuple[float, float]]:
    """Lowest and highest 1-NN and weighted-kNN (top K, weights exp(cos / T), ties to the
    smallest class) accuracy of L2-normalised m-prefixes, brute force in float64. A query whose
    decision a score change of ``tol`` could flip (best scores, the K-th neighbour, the two
    best class votes) counts as right in the highest, wrong in the lowest."""
    s = _cosines(data, m)
    y, ty = data.test_y, data.train_y
    order = np.argsort(-s, axis=1, kind="stable")
    top = np.take_along_axis(s, order, axis=1)
    one_right = ty[order[:, 0]] == y
    one_near = top[:, 1] >= top[:, 0] - tol
    w = np.exp((top[:, :K] - top[:, :1]) / T)
    votes = np.zeros((len(s), data.num_classes))
    np.add.at(votes, (np.arange(len(s))[:, None], ty[order[:, :K]]), w)
    pred = votes.argmax(axis=1)
    best = np.sort(votes, axis=1)
    k_right = pred == y
    margin = (best[:, -1] + best[:, -2]) * 2 * tol / T  # each weight moves by ~tol / T
    k_near = (top[:, K - 1] - top[:, K] <= tol) | (best[:, -1] - best[:, -2] <= margin)
    out = {}
    for key, right, near in (("top1", one_right, one_near), (f"top1_k{K}", k_right, k_near)):
        out[key] = (float(np.mean(right & ~near)), float(np.mean(right | near)))
    return out


def _check_knn(metrics: dict, ref, got, dims, tol: float = 2e-5) -> None:
    """kNN metrics within brute-force bounds on the reference embeddings ``ref``; the
    evaluated arrays ``got`` are the same embeddings (cosines within tol / 4)."""
    for m in dims:
        assert np.abs(_cosines(got, m) - _cosines(ref, m)).max() <= tol / 4, m
        for key, (lo, hi) in _knn_bounds(ref, m, tol).items():
            value = metrics[f"knn/{key}@d{m}"]
            assert lo - 1e-12 <= value <= hi + 1e-12, (key, m, lo, value, hi)
            assert hi - lo <= 2.5 / len(ref.test_y), (key, m, lo, hi)  # <= 2 near-ties
        assert 0 <= metrics[f"probe/top1@d{m}"] <= 1, m


@pytest.mark.slow
def test_minilm_on_gloss_classes_gives_knn_and_probe_per_prefix(runs):
    """encoder=sentence_transformers on data.task=classification: every split's glosses
    embedded (val too), labelled by lexicographer class; kNN per prefix equals brute force on
    MiniLM run through transformers; the probe, precisions and the PCA baseline run; few-shot
    is dropped (WordNet's classes cannot fill its episodes), linear (trained heads) too."""
    from mrl.eval.registry import EvalData
    from mrl.models.text import TextEncoder
    from mrl.objectives.text_classification import gloss_eval_data

    res, tmp = runs
    r = res["cls"]
    assert r["code"] == 0, r["stderr"][-3000:]
    assert "skipping fewshot on these classes (class" in r["stdout"]
    ref = gloss_eval_data(TextEncoder("minilm", max_seq_length=256).eval(), _dm(), 128)
    got = _arrays(tmp / "cls")
    assert sorted(got) == [f"{s}_{a}" for s in ("test", "train", "val") for a in "xy"]
    for split in ("train", "val", "test"):
        np.testing.assert_array_equal(got[f"{split}_y"], getattr(ref, f"{split}_y"))
        z = getattr(ref, f"{split}_x")
        z = z / np.linalg.norm(z, axis=1, keepdims=True)  # MiniLM's own Normalize
        np.testing.assert_allclose(got[f"{split}_x"], z, atol=2e-5, err_msg=split)
    assert len(ref.train_y) > 300 and len(ref.test_y) > 80 and ref.num_classes == 45
    metrics = _json(tmp / "cls" / "metrics.json")
    _check_knn(metrics, ref, EvalData.from_arrays(got, 45), DIMS)
    majority = np.bincount(ref.test_y).max() / len(ref.test_y)
    assert metrics["knn/top1@d384"] > majority  # glosses carry their class
    for m in DIMS:
        for key in ("knn/top1", "retrieval/mAP@10"):
            assert 0 <= metrics[f"{key}@d{m}/binary"] <= 1
            if m < len(ref.train_y):  # PCA: at most one component per train gloss
                assert 0 <= metrics[f"{key}@d{m}/pca"] <= 1
        assert f"linear/top1@d{m}" not in metrics and f"text_retrieval/R@1@d{m}" not in metrics
        assert not any(k.startswith("fewshot/") for k in metrics)
    record = _json(tmp / "cls" / "run.json")
    assert record["status"] == "completed"
    assert record["evaluators"] == ["probe", "knn", "retrieval", "adaptive_ret"]


@pytest.mark.slow
def test_text_wordnet_cls_checkpoint_evaluates_its_glosses(runs):
    """ckpt_path= of a text_wordnet_cls run: its own data config (task=classification), its
    trained encoder's gloss embeddings, kNN per prefix equal to brute force on them."""
    from mrl.eval.registry import EvalData
    from mrl.export import text_encoder_of
    from mrl.objectives.text_classification import gloss_eval_data
    from mrl.tasks.evaluate import read_training_checkpoint

    res, tmp = runs
    r = res["ckpt"]
    assert r["code"] == 0, r["stderr"][-3000:]
    ckpt = tmp / "trained" / "checkpoints" / "last.ckpt"
    encoder, _ = text_encoder_of(read_training_checkpoint(ckpt), ckpt)
    dm = WordNetDataModule(
        task="classification", cache_dir=CACHE_ROOT.expanduser(), test_subset=2000, **SPLITS
    )
    ref = gloss_eval_data(encoder, dm, 128)
    got = _arrays(tmp / "ckpt")
    for split in ("train", "val", "test"):
        np.testing.assert_array_equal(got[f"{split}_y"], getattr(ref, f"{split}_y"))
        np.testing.assert_allclose(got[f"{split}_x"], getattr(ref, f"{split}_x"), atol=2e-5)
    metrics = _json(tmp / "ckpt" / "metrics.json")
    _check_knn(metrics, ref, EvalData.from_arrays(got, 45), DIMS)
    meta = _json(tmp / "ckpt" / "embeddings" / "meta.json")
    assert meta["task"] == "classification" and meta["encoder"]["kind"] == "checkpoint"
    assert "task='classification'" in meta["data"] and "test_subset=2000" in meta["data"]
    assert _json(tmp / "ckpt" / "run.json")["method"] == "MRL"


@pytest.mark.slow
def test_retrieval_and_classification_never_share_a_cache(runs):
    """One run dir: retrieval, then classification (not the retrieval cache: its meta names
    the task), classification again (its own cache, reused), retrieval again (not reused)."""
    res, tmp = runs
    for name in ("ret", "cls_shared", "cls_shared_again", "ret_shared_again"):
        assert res[name]["code"] == 0, (name, res[name]["stderr"][-3000:])
    meta = str(tmp / "shared" / "embeddings" / "meta.json")
    ret, cls = json.loads(res["ret"]["files"][meta]), json.loads(res["cls_shared"]["files"][meta])
    assert ret["split"] == "test" and "task" not in ret and "task='retrieval'" in ret["data"]
    assert cls["task"] == "classification" and "split" not in cls
    assert "task='classification'" in cls["data"] and ret["encoder"] == cls["encoder"]
    reused = {n: "embeddings: reusing" in res[n]["stdout"] for n in res if "shared" in n}
    assert reused == {"cls_shared": False, "cls_shared_again": True, "ret_shared_again": False}
    assert "embeddings: reusing" not in res["ret"]["stdout"]
    n = len(_dm().glosses("train")[0])
    a = _arrays(tmp / "shared")  # retrieval's layout again: documents = the test glosses
    assert len(a["train_x"]) < n and np.array_equal(a["train_y"], np.arange(len(a["train_y"])))
    assert json.loads(res["cls_shared_again"]["files"][meta]) == cls


@pytest.mark.slow
def test_mlm_data_and_impossible_fewshot_are_one_line(runs):
    """task=mlm is refused in one line naming it and the valid tasks; a chosen few-shot that
    WordNet's classes cannot fill is refused in one line before any embedding."""
    res, tmp = runs
    expect = {
        "mlm": "data.task='mlm' cannot be evaluated by eval.py; use data.task=retrieval or "
        "data.task=classification",
        "fewshot": "eval.fewshot class ",
    }
    for name, match in expect.items():
        r = res[name]
        lines = [ln for ln in r["stderr"].splitlines() if ln.startswith("error:")]
        assert r["code"] == 2 and len(lines) == 1, (name, r["code"], r["stderr"][-2000:])
        assert match in lines[0] and "Traceback" not in r["stderr"], (name, lines[0])
        assert not (tmp / name / "embeddings").exists(), name
