"""Bring-your-own embeddings: .npy folder / prefix, .npz with a key map, .parquet; every bad
input is one MRLError line naming the array (issue #19 items 6 and 12)."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mrl import MRLError
from mrl.eval.cache import load_embeddings
from mrl.eval.pipeline import eval_dims
from mrl.eval.registry import EvalData
from mrl.eval.search import prefix_neighbors
from mrl_test_utils import run_cli_cases

NAMES = ("train_x", "train_y", "test_x", "test_y")


def write_parquet(path, arrays, fixed: bool = True, names=("embedding", "label", "split")):
    """One row per item: embedding (fixed-size or variable list of float32), label, split."""
    xs = np.concatenate([arrays["train_x"], arrays["test_x"]])
    ys = np.concatenate([arrays["train_y"], arrays["test_y"]])
    split = ["train"] * len(arrays["train_x"]) + ["test"] * len(arrays["test_x"])
    # the splits' rows interleaved at random, each split's own order kept
    n, n_train = len(xs), len(arrays["train_x"])
    is_train = np.zeros(n, bool)
    is_train[np.random.default_rng(0).choice(n, n_train, replace=False)] = True
    order = np.empty(n, np.int64)
    order[is_train], order[~is_train] = np.arange(n_train), np.arange(n_train, n)
    flat = pa.array(xs[order].ravel())
    emb = (
        pa.FixedSizeListArray.from_arrays(flat, xs.shape[1])
        if fixed
        else pa.array(list(xs[order]), type=pa.list_(pa.float32()))
    )
    table = pa.table(
        {names[0]: emb, names[1]: pa.array(ys[order]), names[2]: pa.array(np.asarray(split)[order])}
    )
    pq.write_table(table, path)
    return path


def test_every_format_loads_the_same_arrays(pixels, tmp_path):
    (tmp_path / "dir").mkdir()
    for k, v in pixels.items():
        np.save(tmp_path / "dir" / f"{k}.npy", v)
        np.save(tmp_path / f"mine_{k}.npy", v)
    np.savez(tmp_path / "other.npz", **{f"emb_{k}": v for k, v in pixels.items()})
    keys = {k: f"emb_{k}" for k in NAMES}
    write_parquet(tmp_path / "fixed.parquet", pixels)
    write_parquet(tmp_path / "list.parquet", pixels, fixed=False, names=("vec", "cls", "part"))
    loaded = {
        "dir": load_embeddings(tmp_path / "dir"),
        "prefix": load_embeddings(tmp_path / "mine"),
        "npz": load_embeddings(tmp_path / "other.npz", keys=keys),
        "npz_cli": load_embeddings({"path": str(tmp_path / "other.npz"), "keys": keys}),
        "parquet": load_embeddings(tmp_path / "fixed.parquet"),
        "parquet_list": load_embeddings(
            {"path": tmp_path / "list.parquet", "keys": {"x": "vec", "y": "cls", "split": "part"}}
        ),
    }
    for fmt, arrays in loaded.items():
        assert set(arrays) == set(NAMES), fmt
        for k in NAMES:
            np.testing.assert_array_equal(arrays[k], pixels[k], err_msg=f"{fmt} {k}")
        assert arrays["train_y"].dtype.kind == "i" and arrays["test_x"].dtype == np.float32
    assert isinstance(loaded["prefix"]["train_x"], np.memmap)  # .npy files are memory-mapped
    assert isinstance(loaded["dir"]["test_x"], np.memmap)
    with pytest.raises(MRLError, match=r"lack array 'train_x' \(keys maps it to 'nope'\)"):
        load_embeddings(tmp_path / "other.npz", keys={**keys, "train_x": "nope"})
    with pytest.raises(MRLError, match=r"keys has 'trainx'; name some of"):
        load_embeddings(tmp_path / "other.npz", keys={"trainx": "a"})
    with pytest.raises(MRLError, match=r"no column 'embedding' \(the x column\).*'vec'"):
        load_embeddings(tmp_path / "list.parquet")


def _bad(pixels, **change):
    arrays = dict(pixels)
    arrays.update(change)
    return arrays


@pytest.mark.parametrize(
    "case, match",
    [
        ("nan_test", r"^test_x holds NaN or infinite values \(first at row 7\)"),
        ("inf_train", r"^train_x holds NaN or infinite values \(first at row 3\)"),
        ("short_train_y", r"^train_y has 399 labels but train_x has 400 rows"),
        ("one_d_x", r"^train_x has shape \(400,\); expected a 2-D array"),
        ("string_labels", r"^test_y has dtype <U\d+; expected integer class labels 0..C-1"),
        ("float_labels", r"^train_y has dtype float64; expected integer class labels"),
        ("empty_train", r"^train_x has shape \(0, 784\); the train split needs at least one"),
        ("huge_label", r"^train_y has label 1000000000; labels must be class indices 0..C-1"),
        ("negative_label", r"^test_y has a negative label -1"),
        ("other_width", r"^test_x has width 10 but train_x has width 784"),
        ("text_x", r"^train_x has dtype <U\d+; expected real-valued \(float\) embeddings"),
    ],
)
def test_bad_embedding_input_is_one_line(pixels, tmp_path, case, match):
    x, y = pixels["train_x"], pixels["train_y"]
    nan_test = pixels["test_x"].copy()
    nan_test[7, 5] = np.nan
    inf_train = x.copy()
    inf_train[3, 0] = np.inf
    huge = y.copy()
    huge[11] = 10**9
    neg = pixels["test_y"].copy()
    neg[0] = -1
    arrays = {
        "nan_test": _bad(pixels, test_x=nan_test),
        "inf_train": _bad(pixels, train_x=inf_train),
        "short_train_y": _bad(pixels, train_y=y[:-1]),
        "one_d_x": _bad(pixels, train_x=x[:, 0]),
        "string_labels": _bad(pixels, test_y=pixels["test_y"].astype(str)),
        "float_labels": _bad(pixels, train_y=y.astype(np.float64)),
        "empty_train": _bad(pixels, train_x=x[:0], train_y=y[:0]),
        "huge_label": _bad(pixels, train_y=huge),
        "negative_label": _bad(pixels, test_y=neg),
        "other_width": _bad(pixels, test_x=pixels["test_x"][:, :10]),
        "text_x": _bad(pixels, train_x=x.astype(str)),
    }[case]
    with pytest.raises(MRLError, match=match) as err:  # an evaluator's entry
        EvalData.from_arrays(arrays)
    assert "\n" not in str(err.value)
    if case in ("string_labels", "text_x"):
        return  # .npz without pickles cannot hold these differently; same check
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(MRLError, match=match[1:]):  # and the loader (path in front)
        load_embeddings(tmp_path / "bad.npz")


def test_dims_beyond_the_width_and_checked_finite_once(pixels):
    with pytest.raises(MRLError, match=r"dims=\[16, 1000\]: \[1000\] not integers in 1..784"):
        eval_dims([], [], 784, only=[16, 1000])
    with pytest.raises(MRLError, match=r"1000 exceeds the embedding width 784"):
        prefix_neighbors(pixels["train_x"], pixels["test_x"], [1000], 5)
    # a label far above the classes present is refused before anything is allocated
    data = EvalData.from_arrays(pixels)
    assert data.num_classes == 10


def test_cli_parquet_at_every_precision_and_its_errors(pixels, tmp_path):
    good = write_parquet(tmp_path / "good.parquet", pixels)
    nan = dict(pixels, test_x=pixels["test_x"].copy())
    nan["test_x"][5, 100] = np.nan
    bad = write_parquet(tmp_path / "nan.parquet", nan)
    huge = dict(pixels, train_y=pixels["train_y"].copy())
    huge["train_y"][0] = 10**9
    write_parquet(tmp_path / "huge.parquet", huge)
    np.savez(tmp_path / "k.npz", **{f"e_{k}": v for k, v in pixels.items()})
    keyed = "{path:'%s',keys:{train_x:e_train_x,train_y:e_train_y,test_x:e_test_x,test_y:e_test_y}}"
    common = ["logger=csv", "eval=[knn,retrieval]", "eval.retrieval.ks=[10]"]
    out = tmp_path / "ok"
    cases = [
        (
            "ok",
            "eval.py",
            [
                f"embeddings={good}",
                *common,
                "eval.precisions=[float32,int8,binary]",
                "dims=[16,784]",
                f"hydra.run.dir={out}",
            ],
            {},
            [out / "metrics.json", out / "precisions.json"],
        ),
        (
            "npz_keys",
            "eval.py",
            [
                f"embeddings={keyed % (tmp_path / 'k.npz')}",
                *common,
                "dims=[784]",
                f"hydra.run.dir={tmp_path}/k",
            ],
            {},
            [tmp_path / "k" / "metrics.json"],
        ),
        ("nan", "eval.py", [f"embeddings={bad}", *common, f"hydra.run.dir={tmp_path}/n"], {}),
        (
            "huge",
            "eval.py",
            [f"embeddings={tmp_path / 'huge.parquet'}", *common, f"hydra.run.dir={tmp_path}/h"],
            {},
        ),
        (
            "precision",
            "eval.py",
            [
                f"embeddings={good}",
                *common,
                "eval.precisions=[int4]",
                f"hydra.run.dir={tmp_path}/p",
            ],
            {},
        ),
        (
            "dims",
            "eval.py",
            [f"embeddings={good}", *common, "dims=[16,1000]", f"hydra.run.dir={tmp_path}/d"],
            {},
        ),
    ]
    r = run_cli_cases(cases, tmp_path / "driver")
    assert r["ok"]["code"] == 0, r["ok"]["stderr"][-3000:]
    metrics = json.loads(r["ok"]["files"][str(out / "metrics.json")])
    for m in (16, 784):
        for p in ("", "/int8", "/binary"):
            for key in ("knn/top1", "knn/top1_k20", "retrieval/mAP@10", "retrieval/R@10"):
                assert 0 <= metrics[f"{key}@d{m}{p}"] <= 1, (key, m, p)
    assert not any(k.endswith("/float16") for k in metrics)
    assert abs(metrics["knn/top1@d784/int8"] - metrics["knn/top1@d784"]) <= 0.03
    table = json.loads(r["ok"]["files"][str(out / "precisions.json")])
    assert "slice to m -> L2-normalise -> quantize" in table["protocol"]
    row = next(x for x in table["rows"] if x["precision"] == "binary" and x["dim"] == 784)
    assert row["bytes"] == 98
    assert row["knn/top1 retention"] == pytest.approx(
        metrics["knn/top1@d784/binary"] / metrics["knn/top1@d784"]
    )
    assert "retention" in r["ok"]["stdout"] and (out / "plots").is_dir()
    assert r["npz_keys"]["code"] == 0, r["npz_keys"]["stderr"][-3000:]
    k_metrics = json.loads(r["npz_keys"]["files"][str(tmp_path / "k" / "metrics.json")])
    assert k_metrics["knn/top1@d784"] == metrics["knn/top1@d784"]  # same arrays, same result
    expect = {  # the parquet's test rows keep their order among themselves: row 5 is row 5
        "nan": "test_x holds NaN or infinite values (first at row 5)",
        "huge": "train_y has label 1000000000; labels must be class indices 0..C-1",
        "precision": "eval.precisions='int4' is not a precision",
        "dims": "dims=[16, 1000]: [1000] not integers in 1..784",
    }
    for name, fragment in expect.items():
        res = r[name]
        lines = [ln for ln in res["stderr"].splitlines() if ln.startswith("error:")]
        assert res["code"] == 2 and len(lines) == 1, (name, res["stderr"][-2000:])
        assert fragment in lines[0], (name, lines[0])
        assert "Traceback" not in res["stderr"]
