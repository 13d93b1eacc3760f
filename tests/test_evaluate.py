"""End-to-end evaluation of a short real training run: every evaluator, every prefix."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import torch

from mrl import MRLError
from mrl.eval.cache import load_embeddings
from mrl.tasks.evaluate import load_module
from mrl_test_utils import compose_cfg, run_cli_cases

DIMS = [8, 16, 32, 64, 128, 256, 512]
EXTRA = [12, 24, 48]


@pytest.fixture(scope="module")
def evaluated(trained_run, tmp_path_factory):
    from mrl.tasks.evaluate import eval_task

    run_dir, _ = trained_run
    out = tmp_path_factory.mktemp("eval") / "run"
    cfg = compose_cfg(
        "eval",
        out,
        f"ckpt_path={run_dir}/checkpoints/last.ckpt",
        "logger=csv",
        f"extra_dims={EXTRA}",
        "data_overrides.test_subset=1000",
        "eval.fewshot.episodes=50",
        "eval.probe.epochs=5",
    )
    return out, eval_task(cfg)


@pytest.mark.slow
def test_every_evaluator_writes_every_prefix(evaluated):
    out, metrics = evaluated
    assert json.loads((out / "metrics.json").read_text()) == pytest.approx(metrics)
    all_dims = sorted(DIMS + EXTRA)
    for m in all_dims:
        keys = [
            f"probe/top1@d{m}",
            f"knn/top1@d{m}",
            f"knn/top1_k20@d{m}",
            f"fewshot/10way1shot@d{m}",
            f"fewshot/10way5shot@d{m}",
        ]
        keys += [f"retrieval/{n}@{k}@d{m}" for n in ("P", "mAP", "R") for k in (10, 25, 50, 100)]
        for k in keys:
            assert 0.0 <= metrics[k] <= 1.0, k
    for m in DIMS:  # trained heads exist only for trained prefixes
        assert 0.0 <= metrics[f"linear/top1@d{m}"] <= 1.0
    assert "linear/top1@d12" not in metrics
    for k in ("adaptive_cls/top1", "adaptive_ret/mAP@10", "adaptive_ret/exact_mAP@10"):
        assert 0.0 <= metrics[k] <= 1.0
    assert 8 <= metrics["adaptive_cls/expected_dim"] <= 512
    assert metrics["adaptive_ret/flops_ratio"] > 1

    # exact values against references written here with plain numpy loops, on the cache
    arr = load_embeddings(out / "embeddings")
    tx, ty = np.asarray(arr["train_x"], np.float64), arr["train_y"]
    qx, qy = np.asarray(arr["test_x"], np.float64), arr["test_y"]
    module = load_module(json.loads((out / "run.json").read_text())["ckpt"])
    for m in (8, 12, 512):
        db = tx[:, :m] / np.linalg.norm(tx[:, :m], axis=1, keepdims=True)
        q = qx[:, :m] / np.linalg.norm(qx[:, :m], axis=1, keepdims=True)
        order = np.argsort(-(q @ db.T), axis=1, kind="stable")[:, :10]
        # float64 here, float32 in the search: a near-tie may reorder one query's list,
        # so each metric may differ by one query's share (1/n); a wrong convention (mAP
        # divided by the hits, recall by k) moves them by far more (+1e-9: 0.651 - 0.65
        # is a hair above 0.001 in floating point)
        tol = 1.0 / len(qy) + 1e-9
        assert metrics[f"knn/top1@d{m}"] == pytest.approx(np.mean(ty[order[:, 0]] == qy), abs=tol)
        p10, ap10, r10 = [], [], []
        for i in range(len(qy)):
            rel = [int(ty[j] == qy[i]) for j in order[i]]
            p10.append(sum(rel) / 10)
            ap10.append(sum(sum(rel[: j + 1]) / (j + 1) for j in range(10) if rel[j]) / 10)
            r10.append(sum(rel) / np.sum(ty == qy[i]))
        assert metrics[f"retrieval/P@10@d{m}"] == pytest.approx(np.mean(p10), abs=tol)
        assert metrics[f"retrieval/mAP@10@d{m}"] == pytest.approx(np.mean(ap10), abs=tol)
        assert metrics[f"retrieval/R@10@d{m}"] == pytest.approx(np.mean(r10), abs=tol)
    with torch.no_grad():
        logits = module.net.head(torch.from_numpy(np.asarray(arr["test_x"])))
    for m in DIMS:
        acc = float((logits[m].argmax(1).numpy() == qy).mean())
        assert metrics[f"linear/top1@d{m}"] == pytest.approx(acc, abs=1e-6)


@pytest.mark.slow
def test_metrics_beat_chance_and_grow_with_prefix(evaluated):
    _, metrics = evaluated
    for m in DIMS:
        assert metrics[f"knn/top1@d{m}"] > 0.4, m  # chance is 0.1
        assert metrics[f"probe/top1@d{m}"] > 0.4, m
    for name in ("knn/top1", "probe/top1", "retrieval/mAP@10", "linear/top1"):
        assert metrics[f"{name}@d512"] >= metrics[f"{name}@d8"] - 0.01, name


@pytest.mark.slow
def test_cache_plot_and_sidecar(evaluated):
    out, _ = evaluated
    arrays = load_embeddings(out / "embeddings")
    assert arrays["train_x"].dtype == np.float32 and arrays["train_x"].shape[1] == 512
    assert arrays["test_x"].shape == (1000, 512) and arrays["test_y"].dtype == np.int64
    assert not np.allclose(np.linalg.norm(arrays["test_x"], axis=1), 1.0)  # not normalised
    side = json.loads((out / "embeddings" / "meta.json").read_text())
    assert side["ckpt"].endswith("last.ckpt") and side["ckpt_fingerprint"]
    assert (out / "plots" / "metric_vs_dim.png").stat().st_size > 1000


@pytest.mark.slow
def test_cli_subset_of_evaluators_reuses_cache(trained_run, tmp_path):
    """Three ``python eval.py`` runs into one run dir (in one subprocess, one after another)."""
    run_dir, _ = trained_run
    args = [
        f"ckpt_path={run_dir}/checkpoints/last.ckpt",
        "logger=csv",
        "data_overrides.subset=1500",
        "data_overrides.test_subset=300",
        f"hydra.run.dir={tmp_path}/e",
    ]
    out = tmp_path / "e"
    read = [out / "metrics.json", out / "eval_timing.json"]  # read back after each run
    results = run_cli_cases(
        [
            ("knn_retrieval", "eval.py", [*args, "eval=[knn,retrieval]"], {}, read),
            ("knn", "eval.py", [*args, "eval=[knn]"], {}, read),
            # dims=[512]: the largest prefix alone, heads included, from the same cache
            ("linear_knn_512", "eval.py", [*args, "eval=[linear,knn]", "dims=[512]"], {}, read),
        ],
        tmp_path / "driver",
    )
    for name, r in results.items():
        assert r["code"] == 0, (name, r["stderr"][-3000:])

    def files(name: str) -> tuple[dict, dict]:
        f = results[name]["files"]
        return json.loads(f[str(read[0])]), json.loads(f[str(read[1])])

    metrics, timing = files("knn_retrieval")
    assert {k.split("/")[0] for k in metrics} == {"knn", "retrieval"}
    assert timing["embeddings_reused"] is False
    assert files("knn")[1]["embeddings_reused"]
    metrics, timing = files("linear_knn_512")
    assert [k for k in metrics if k.startswith("linear/")] == ["linear/top1@d512"]
    assert metrics["linear/top1@d512"] > 0.4  # chance is 0.1
    assert timing["embeddings_reused"]


def test_eval_dims_default_extra_and_only():
    from mrl.eval.pipeline import eval_dims

    assert eval_dims([8, 16, 32], [12], 32) == [8, 12, 16, 32]
    assert eval_dims([8, 16, 32], [12], 32, only=[32, 8, 32]) == [8, 32]
    with pytest.raises(MRLError, match=r"eval.extra_dims=\[12, 64\]: \[64\] not integers in 1..32"):
        eval_dims([8], [12, 64], 32)
    with pytest.raises(MRLError, match=r"dims=\[\]: give at least one"):
        eval_dims([8], [], 32, only=[])
    with pytest.raises(MRLError, match=r"\['a'\] not integers"):
        eval_dims([8], [], 32, only=["a"])


def test_unknown_evaluator_and_missing_inputs(tmp_path):
    no_npz = [f"embeddings={tmp_path}/none.npz", "logger=csv", "eval=[knn]"]
    no_ckpt = [f"ckpt_path={tmp_path}/missing.ckpt", "logger=csv"]
    results = run_cli_cases(  # both ``python eval.py ...`` runs in one subprocess
        [
            ("no_npz", "eval.py", [*no_npz, f"hydra.run.dir={tmp_path}/x"], {}),
            ("no_ckpt", "eval.py", [*no_ckpt, f"hydra.run.dir={tmp_path}/y"], {}),
        ],
        tmp_path / "driver",
    )
    r = results["no_npz"]
    assert r["code"] == 2 and "does not exist" in r["stderr"] and "Traceback" not in r["stderr"]
    r = results["no_ckpt"]
    assert r["code"] == 2 and "is not a file" in r["stderr"]
    from mrl.eval.registry import Evaluator, build_evaluators

    with pytest.raises(MRLError, match=r"eval.knnn has no _target_"):
        build_evaluators({"knnn": {}})
    with pytest.raises(MRLError, match="no evaluator selected"):
        build_evaluators({})
    with pytest.raises(MRLError, match="builds a dict, not an mrl Evaluator"):
        build_evaluators({"x": {"_target_": "builtins.dict"}})
    built = build_evaluators(compose_cfg("eval", tmp_path / "c", "ckpt_path=x").eval)
    assert set(built) >= {"linear", "probe", "knn", "retrieval", "fewshot"}
    assert all(isinstance(e, Evaluator) for e in built.values())


def test_crafted_pickle_checkpoint_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    bad = tmp_path / "evil.ckpt"
    bad.write_bytes(pickle.dumps({"state_dict": Evil(), "hyper_parameters": {}}))
    with pytest.raises(MRLError, match="cannot be loaded safely"):
        load_module(bad)
    corrupt = tmp_path / "corrupt.ckpt"
    corrupt.write_bytes(b"\x00garbage")
    with pytest.raises(MRLError, match="cannot be loaded safely"):
        load_module(corrupt)
