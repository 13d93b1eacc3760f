"""Shifted test sets (``eval=[shift]``): class matching, the restricted protocol, a real run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mrl.core.errors import MRLError
from mrl.eval.shift import check_sets, class_mapping, list_shift_set, shift_metrics


def test_class_mapping_by_name_by_index_and_bad_folders(tmp_path):
    wnids = ["n01", "n02", "n03", "n04"]
    assert class_mapping(["n02", "n04"], wnids, tmp_path) == {"n02": 1, "n04": 3}
    assert class_mapping(["0", "3"], wnids, tmp_path) == {"0": 0, "3": 3}  # ImageNet-V2 layout
    with pytest.raises(MRLError, match=r"class folder\(s\) \['n09'\] match no training class"):
        class_mapping(["n01", "n09"], wnids, tmp_path)
    with pytest.raises(MRLError, match=r"\['4'\] match no training class.*0\.\.3"):
        class_mapping(["0", "4"], wnids, tmp_path)
    with pytest.raises(MRLError, match="is not a folder"):
        list_shift_set(tmp_path / "missing", wnids)
    with pytest.raises(MRLError, match=r"eval.shift.sets=None must map names to folders"):
        check_sets(None)


def test_restricted_protocol_against_brute_force(pixels):
    """1-NN among the training rows of the set's classes only, and the head's argmax over
    those classes' logits only, both against plain numpy loops."""
    rng = np.random.default_rng(0)
    keep = np.isin(pixels["test_y"], [1, 7, 8])  # a 3-class shifted set
    x, y = pixels["test_x"][keep], pixels["test_y"][keep]
    dims = [300, 784]  # the first rows of a 28x28 image are often blank
    logits = {m: rng.standard_normal((len(x), 10)).astype(np.float32) for m in dims}
    got = shift_metrics(pixels["train_x"], pixels["train_y"], x, y, dims, logits, "s")

    for m in dims:
        hits = []
        for i in range(len(x)):
            best, best_j = -np.inf, -1
            q = x[i, :m] / np.linalg.norm(x[i, :m])
            for j in range(len(pixels["train_x"])):
                if pixels["train_y"][j] not in (1, 7, 8):
                    continue
                d = pixels["train_x"][j, :m]
                s = float(q @ (d / np.linalg.norm(d)))
                if s > best + 1e-6:
                    best, best_j = s, j
            hits.append(pixels["train_y"][best_j] == y[i])
        assert got[f"shift/s/1nn@d{m}"] == pytest.approx(np.mean(hits), abs=1 / len(x))
        pred = [[1, 7, 8][int(np.argmax(row[[1, 7, 8]]))] for row in logits[m]]
        assert got[f"shift/s/top1@d{m}"] == pytest.approx(np.mean(np.array(pred) == y))
    # restricting matters: over all 10 classes the random head is right far less often
    free = np.mean(logits[300].argmax(1) == y)
    assert got["shift/s/top1@d300"] > free + 0.1


def _write_set(folder, images, labels, rotate: int = 0) -> None:
    for i, (img, lab) in enumerate(zip(images, labels, strict=True)):
        (folder / str(int(lab))).mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.rot90(img[0], rotate)).save(folder / str(int(lab)) / f"{i}.png")


@pytest.mark.slow
def test_eval_cli_shift_sets_on_a_trained_model(trained_run, tmp_path):
    """``eval.py eval=[shift]`` on two folders of real test images (numbered class folders,
    3 of 10 classes): the unshifted copy matches the model's own embeddings and heads, the
    rotated copy is worse; a second run reuses the cached embeddings."""
    import mrl
    from mrl.data import FashionMNISTDataModule
    from mrl_test_utils import run_cli_cases

    run_dir, _ = trained_run
    ds = FashionMNISTDataModule(val_size=500, test_subset=300).dataset("test")
    images, labels = ds.images[ds.indices].numpy(), ds.targets.numpy()
    keep = np.isin(labels, [0, 5, 9])
    images, labels = images[keep], labels[keep]
    _write_set(tmp_path / "same", images, labels)
    _write_set(tmp_path / "rot", images, labels, rotate=1)

    out = tmp_path / "e"
    args = [
        f"ckpt_path={run_dir}/checkpoints/last.ckpt",
        "logger=csv",
        "data_overrides.subset=1000",
        "eval=[shift]",
        f"eval.shift.sets={{same: {tmp_path / 'same'}, rot: {tmp_path / 'rot'}}}",
        f"hydra.run.dir={out}",
    ]
    read = [out / "metrics.json"]
    results = run_cli_cases(
        [
            ("first", "eval.py", args, {}, read),
            ("again", "eval.py", args, {}, read),
            (
                "bad",
                "eval.py",
                [*args[:-2], "eval.shift.sets=[a]", f"hydra.run.dir={out}2"],
                {},
                [],
            ),
        ],
        tmp_path / "driver",
    )
    assert results["first"]["code"] == 0, results["first"]["stderr"][-3000:]
    metrics = json.loads(results["first"]["files"][str(read[0])])
    cached = np.load(out / "embeddings" / "shift_same_x.npy")
    assert "reused" in results["again"]["stderr"] + results["again"]["stdout"]

    # the set's rows come in ImageFolder order (class folder, then file name)
    order = [
        int(Path(f).stem) for f, _ in list_shift_set(tmp_path / "same", [str(c) for c in range(10)])
    ]
    images, labels = images[order], labels[order]
    model = mrl.load(run_dir)
    z = model.encode(images, dim=512, normalize=False)
    np.testing.assert_allclose(cached, z, atol=1e-4)
    with torch.no_grad():
        logits = {m: lg.numpy() for m, lg in model.net.head(torch.from_numpy(z)).items()}
    for m in (8, 512):
        sub = logits[m][:, [0, 5, 9]]
        want = np.mean(np.array([0, 5, 9])[sub.argmax(1)] == labels)
        assert metrics[f"shift/same/top1@d{m}"] == pytest.approx(want)
        assert metrics[f"shift/rot/top1@d{m}"] < metrics[f"shift/same/top1@d{m}"]
        assert metrics[f"shift/same/1nn@d{m}"] > metrics[f"shift/rot/1nn@d{m}"]
    bad = results["bad"]
    assert bad["code"] != 0 and "eval.shift.sets=" in bad["stderr"], bad["stderr"][-2000:]
    assert len(bad["stderr"].strip().splitlines()) == 1
