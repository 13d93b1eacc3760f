"""Bad inputs end in one line, ``error: <message>``, exit status 2, and no traceback.

Every case runs the real entry point (``train.py`` / ``eval.py`` with Hydra); to keep the suite
fast all cases run in ONE Python process (``mrl_test_utils.run_cli_cases`` calls each script
with ``runpy``, catching its ``SystemExit`` and capturing stderr). ``HYDRA_FULL_ERROR=1`` brings
tracebacks back (last test).

| # | bad input | message (after ``error: ``; <tmp> is a temporary folder) |
|---|---|---|
| 1 | ``mrl.dims=[16,8]`` | mrl.dims=[16, 8]: dims must be strictly increasing, e.g. [8, 16] |
| 2 | ``mrl.dims=[8,16,...,100]`` | mrl.dims=[8, 16, '...', 100]: '...' (x2 from 8, 16) cannot reach 100; it gives 64, 128: make the last item one of those steps |
| 3 | ``mrl.dims=[8,16`` (does not parse) | cannot parse the override 'mrl.dims=[8,16': no viable alternative at input '[8,16'; write key=value, lists as key=[a,b]; quote the whole argument for the shell and a value with spaces or special characters for Hydra: 'data.root="/path with space"' |
| 4 | ``mrl.weights=[1,2]`` | mrl.weights=[1, 2]: has 2 values but dims [8, 16, 32, 64, 128, 256, 512] has 7; give one weight per dim |
| 5 | ``mrl.weights=[1,1,1,1,1,1,-1]`` | mrl.weights=[1, 1, 1, 1, 1, 1, -1]: -1 must be a finite number >= 0 |
| 6 | ``method=ff mrl.ff_dim=0`` | mrl.ff_dim=0 must be a positive integer or 'max' |
| 7 | ``model=nope`` | 'nope' is not a config in group 'model' (no model/nope.yaml); choose one of resnet18, resnet50, timm, vit_b16, vit_s16 |
| 8 | ``model.name=resnet_does_not_exist`` | model.name='resnet_does_not_exist' is not a timm model (close: cspresnet50, ...); see timm.list_models() for valid names |
| 9 | ``model=timm`` without model.name | model.name is required ('???' in the config); set it, e.g. model.name=<value> |
| 10 | ``model=vit_s16 model.patch_size=5`` (28 px) | model.patch_size=5 does not divide the image size 28; use a divisor of 28 |
| 11 | ``data=nope`` | 'nope' is not a config in group 'data' (no data/nope.yaml); choose one of cifar10, cifar100, fashion_mnist, imagefolder, imagenet |
| 12 | ``method=nope`` | 'nope' is not a config in group 'method' (no method/nope.yaml); choose one of ff, mrl, mrl_e |
| 13 | ``data=imagefolder data.root=/nonexistent`` | imagefolder root='/nonexistent' does not exist; give an image folder |
| 14 | ``data=imagefolder data.root=<empty dir>`` | <tmp>/empty has no class subfolders; expected <tmp>/empty/<class>/<image> (or <tmp>/empty/train/<class>/<image> and <tmp>/empty/val/<class>/<image>) |
| 15 | ``data.val_size=-1`` | val_size=-1 is invalid; use an integer count >= 0 or a fraction in (0, 1) of the training set |
| 16 | ``trainer.max_epochs=0`` | trainer.max_epochs=0 must be a positive integer |
| 17 | ``trainer.max_epochs=-3`` | trainer.max_epochs=-3 must be a positive integer |
| 18 | ``data.batch_size=0`` | data.batch_size=0 must be a positive integer |
| 19 | ``data.batch_size=-8`` | data.batch_size=-8 must be a positive integer |
| 20 | ``optim.lr=0`` | optim.lr=0 must be a positive number |
| 21 | ``optim.lr=-1`` | optim.lr=-1 must be a positive number |
| 22 | ``optim._target_=torch.optim.Lamb`` | optim._target_='torch.optim.Lamb' is not a torch optimiser class; use e.g. torch.optim.SGD, torch.optim.AdamW or torch.optim.RMSprop |
| 23 | ``seed=-1`` | seed=-1 must be an integer in 0..4294967295 |
| 24 | ``+trainer.bogus=1`` | trainer config is invalid: Trainer.__init__() got an unexpected keyword argument 'bogus'; see pytorch_lightning.Trainer for the valid trainer.* keys and values |
| 25 | ``callbacks.last_checkpoint.every_n_train_steps=-5`` | callbacks.last_checkpoint.every_n_train_steps=-5 must be an integer >= 0 (0 or null: save at epoch ends only) |
| 26 | ``foo=1`` (unknown key) | Could not override 'foo'. To append to your config use +foo=1; Key 'foo' is not in struct |
| 27 | ``hydra.run.dir=<tmp>/file.txt/run`` (under a file) | cannot use <tmp>/file.txt/run: Not a directory (a part of that path is a file, not a folder); give a writable folder (hydra.run.dir=..., hydra.sweep.dir=... or paths.log_dir=...) |
| 28 | ``ckpt_path=last`` with nothing to resume | ckpt_path=last but <run dir>/checkpoints/last.ckpt does not exist; drop ckpt_path to start |
| 29 | ``ckpt_path=/nonexistent.ckpt`` | ckpt_path='/nonexistent.ckpt' is not a file; give a .ckpt path or 'last' |
| 30 | train ``ckpt_path=<corrupt file>`` | ckpt_path=<tmp>/corrupt.ckpt cannot be loaded safely (torch.load weights_only=True: Unsupported operand 0); the file is corrupt, truncated or carries pickled code: give a .ckpt written by train.py |
| 31 | train ``ckpt_path=<crafted pickle>`` (its code never runs) | ckpt_path=<tmp>/evil.ckpt cannot be loaded safely (torch.load weights_only=True: Trying to load unsupported GLOBAL posix.mkdir whose module posix is blocked.); the file is corrupt, truncated or carries pickled code: give a .ckpt written by train.py |
| 32 | train ``ckpt_path=<checkpoint of another config>`` (+ ``mrl.efficient=true``) | ckpt_path=<tmp>/tiny/checkpoints/last.ckpt was written by another config (mrl.efficient False in the checkpoint vs True now); resume with the overrides that wrote it, or drop ckpt_path to start a new run |
| 33 | ``-m ... optim.lr=-1,0.05`` (one impossible job) | 1 of 2 multirun jobs failed (see run.json in each job dir): job 0 [optim.lr=-1]: optim.lr=-1 must be a positive number |
| 34 | eval ``eval=[nope]`` | 'nope' is not a config in group 'eval' (no eval/nope.yaml); choose one of adaptive_cls, adaptive_ret, fewshot, knn, linear, probe, retrieval |
| 35 | eval without ``ckpt_path`` | ckpt_path is required ('???' in the config); set it, e.g. ckpt_path=<value> |
| 36 | eval ``ckpt_path=<corrupt file>`` | checkpoint <tmp>/corrupt.ckpt cannot be loaded safely (weights_only): Weights only load failed. In PyTorch 2.6, ... (evaluate.load_module's wording) |
| 37 | eval ``ckpt_path=<crafted pickle>`` | checkpoint <tmp>/evil.ckpt cannot be loaded safely (weights_only): Weights only load failed. ... (its code never runs) |
| 38 | eval: 1-channel 10-class checkpoint, ``data=imagefolder data.root=<3-class RGB folder>`` | checkpoint expects 10 classes / 1 channels but the data 'imagefolder' has 3 / 3; evaluate on the data it was trained on |
| 39 | eval ``eval=[knn]``, 16 database images (k=20) | k=20 is larger than the database (16 items); use k <= 16 |
| 40 | eval ``eval=[retrieval]``, 16 database images (ks up to 100) | k=100 is larger than the database (16 items); use k <= 16 |
| 41 | eval ``device=tpu`` | device='tpu': use auto, cpu or cuda |
| 42 | eval ``embeddings=/nonexistent.npz`` | embeddings cache /nonexistent.npz does not exist; run eval.py with a ckpt_path |

A NaN / infinite loss (``non-finite loss nan at step 3 (epoch 0, batch 3), prefix d8 ...; lower
optim.lr=... or check the data; the last good checkpoint is kept; <run dir>/checkpoints/last.ckpt
holds the last good state: resume with ckpt_path=last and a lower optim.lr``) is tested in
tests/test_reliability.py.
"""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import pytest

from mrl_test_utils import compose_cfg, run_cli_cases

TINY = (
    "logger=csv",
    "model=timm",
    "model.name=test_efficientnet",
    "data.subset=32",
    "data.batch_size=16",
    "data.val_size=16",
    "trainer.max_epochs=1",
    "~callbacks.rich_progress_bar",
)


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (str(self.marker),))


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Inputs for the cases: a tiny checkpoint, corrupt and crafted files, image folders."""
    from PIL import Image

    from mrl.tasks.train import train

    tmp = tmp_path_factory.mktemp("bad")
    run = tmp / "tiny"
    train(compose_cfg("train", run, *TINY, "test=false"))
    (tmp / "empty").mkdir()
    (tmp / "file.txt").write_text("not a folder")
    (tmp / "corrupt.ckpt").write_bytes(b"\x00garbage, not a checkpoint")
    marker = tmp / "pwned"
    (tmp / "evil.ckpt").write_bytes(pickle.dumps({"state_dict": _Evil(marker)}, protocol=2))
    rgb = tmp / "rgb"
    for c in ("a", "b", "c"):
        (rgb / c).mkdir(parents=True)
        for i in range(10):
            Image.new("RGB", (8, 8), (40 * i, 80, 120)).save(rgb / c / f"{i}.png")
    return {"tmp": tmp, "ckpt": run / "checkpoints" / "last.ckpt", "marker": marker, "rgb": rgb}


def _cases(f) -> dict[str, tuple[str, list[str], list[str]]]:
    """name -> (script, args, fragments the one-line message must contain)."""
    t = f["tmp"]
    run = [f"hydra.run.dir={t}/runs/${{now:%H%M%S%f}}", "logger=csv"]
    tr = {
        "dims_decreasing": (
            ["mrl.dims=[16,8]"],
            ["mrl.dims=[16, 8]", "strictly increasing"],
        ),
        "dims_unreachable": (["mrl.dims=[8,16,...,100]"], ["100", "cannot reach"]),
        "dims_unparsable": (["mrl.dims=[8,16"], ["'mrl.dims=[8,16'", "key=[a,b]"]),
        "weights_count": (["mrl.weights=[1,2]"], ["mrl.weights=[1, 2]", "one weight per dim"]),
        "weights_negative": (["mrl.weights=[1,1,1,1,1,1,-1]"], ["-1", ">= 0"]),
        "ff_dim_zero": (["method=ff", "mrl.ff_dim=0"], ["mrl.ff_dim=0", "positive integer"]),
        "model_unknown_group": (["model=nope"], ["'nope'", "group 'model'", "resnet50, timm"]),
        "model_unknown_timm": (["model.name=resnet_does_not_exist"], ["is not a timm model"]),
        "model_name_missing": (["model=timm"], ["model.name is required"]),
        "vit_patch_mismatch": (
            ["model=vit_s16", "model.patch_size=5"],
            ["model.patch_size=5", "divisor of 28"],
        ),
        "data_unknown_group": (
            ["data=nope"],
            ["'nope'", "group 'data'", "fashion_mnist, fashion_mnist_captions, image_text"],
        ),
        "method_unknown_group": (["method=nope"], ["'nope'", "group 'method'", "ff, mrl, mrl_e"]),
        "data_root_missing": (
            ["data=imagefolder", "data.root=/nonexistent"],
            ["/nonexistent", "does not exist"],
        ),
        "data_root_empty": (["data=imagefolder", f"data.root={t}/empty"], [f"{t}/empty"]),
        "val_size_negative": (["data.val_size=-1"], ["val_size=-1", "fraction in (0, 1)"]),
        "epochs_zero": (["trainer.max_epochs=0"], ["trainer.max_epochs=0", "positive integer"]),
        "epochs_negative": (
            ["trainer.max_epochs=-3"],
            ["trainer.max_epochs=-3", "positive integer"],
        ),
        "batch_size_zero": (["data.batch_size=0"], ["data.batch_size=0", "positive integer"]),
        "batch_size_negative": (["data.batch_size=-8"], ["data.batch_size=-8", "positive integer"]),
        "lr_zero": (["optim.lr=0"], ["optim.lr=0", "positive number"]),
        "lr_negative": (["optim.lr=-1"], ["optim.lr=-1", "positive number"]),
        "optimizer_unknown": (
            ["optim._target_=torch.optim.Lamb"],
            ["'torch.optim.Lamb'", "torch optimiser class"],
        ),
        "seed_negative": (["seed=-1"], ["seed=-1", "0..4294967295"]),
        "trainer_unknown_key": (["+trainer.bogus=1"], ["'bogus'", "trainer"]),
        "checkpoint_interval_negative": (
            ["callbacks.last_checkpoint.every_n_train_steps=-5"],
            ["every_n_train_steps=-5", ">= 0", "epoch ends only"],
        ),
        "key_unknown": (["foo=1"], ["'foo'", "+foo=1"]),
        "run_dir_under_a_file": (
            [f"hydra.run.dir={t}/file.txt/run", "logger=csv"],
            [f"{t}/file.txt/run", "Not a directory", "writable folder"],
        ),
        "resume_nothing": (["ckpt_path=last"], ["ckpt_path=last", "does not exist"]),
        "resume_missing_file": (
            ["ckpt_path=/nonexistent.ckpt"],
            ["/nonexistent.ckpt", "not a file"],
        ),
        "resume_corrupt": ([f"ckpt_path={t}/corrupt.ckpt"], ["corrupt.ckpt", "cannot be loaded"]),
        "resume_crafted_pickle": (
            [f"ckpt_path={t}/evil.ckpt"],
            ["evil.ckpt", "cannot be loaded safely", "unsupported GLOBAL posix.mkdir"],
        ),
        "resume_other_config": (
            [*TINY, "mrl.efficient=true", f"ckpt_path={f['ckpt']}"],
            ["another config", "mrl.efficient False in the checkpoint vs True now"],
        ),
        "multirun_one_impossible_job": (
            [
                "-m",
                *TINY,
                "optim.lr=-1,0.05",
                "trainer.limit_train_batches=1",
                "trainer.limit_val_batches=1",
                "trainer.limit_test_batches=1",
                f"hydra.sweep.dir={t}/sweep",
            ],
            ["1 of 2 multirun jobs failed", "job 0 [optim.lr=-1]: optim.lr=-1 must be a positive"],
        ),
    }
    ev = {
        "eval_unknown_group": (
            ["eval=[nope]", "ckpt_path=x"],
            ["'nope'", "group 'eval'", "knn, linear, probe"],
        ),
        "eval_ckpt_missing": ([], ["ckpt_path is required"]),
        "eval_corrupt": ([f"ckpt_path={t}/corrupt.ckpt"], ["corrupt.ckpt", "cannot be loaded"]),
        "eval_crafted_pickle": ([f"ckpt_path={t}/evil.ckpt"], ["evil.ckpt", "cannot be loaded"]),
        "eval_other_classes_channels": (
            [f"ckpt_path={f['ckpt']}", "data=imagefolder", f"data.root={f['rgb']}"],
            ["expects 10 classes / 1 channels", "has 3 / 3"],
        ),
        "eval_knn_k_above_database": (
            [f"ckpt_path={f['ckpt']}", "eval=[knn]", "data=fashion_mnist", "data.val_size=0"]
            + ["data_overrides.subset=16", "data_overrides.test_subset=8"],
            ["eval.knn needs k=20", "has 16 items", "k <= 16"],
        ),
        "eval_retrieval_k_above_database": (
            [f"ckpt_path={f['ckpt']}", "eval=[retrieval]", "data=fashion_mnist", "data.val_size=0"]
            + ["data_overrides.subset=16", "data_overrides.test_subset=8"],
            ["eval.retrieval needs k=100", "has 16 items", "k <= 16"],
        ),
        "eval_device_unknown": (
            [f"ckpt_path={f['ckpt']}", "device=tpu", "eval=[knn]", "data=fashion_mnist"],
            ["device='tpu'", "auto, cpu or cuda"],
        ),
        "eval_embeddings_missing": (
            ["embeddings=/nonexistent.npz", "eval=[knn]"],
            ["/nonexistent.npz", "does not exist"],
        ),
    }

    def place(args: list[str]) -> list[str]:  # each case gets its own run dir
        own = "-m" in args or any(a.startswith("hydra.run.dir=") for a in args)
        return args if own else [*args, *run]

    out = {k: ("train.py", place(a), fr) for k, (a, fr) in tr.items()}
    out |= {k: ("eval.py", place(a), fr) for k, (a, fr) in ev.items()}
    return out


@pytest.fixture(scope="module")
def results(files, tmp_path_factory):
    """Run every case in one subprocess; ``{name: {"code", "stderr"}}``."""
    cases = [(name, s, args, {}) for name, (s, args, _) in _cases(files).items()]
    full = [f"hydra.run.dir={files['tmp']}/full", "data=nope"]
    cases.append(("full_error", "train.py", full, {"HYDRA_FULL_ERROR": "1"}))
    return run_cli_cases(cases, tmp_path_factory.mktemp("driver"))


CASE_NAMES = [
    "dims_decreasing",
    "dims_unreachable",
    "dims_unparsable",
    "weights_count",
    "weights_negative",
    "ff_dim_zero",
    "model_unknown_group",
    "model_unknown_timm",
    "model_name_missing",
    "vit_patch_mismatch",
    "data_unknown_group",
    "method_unknown_group",
    "data_root_missing",
    "data_root_empty",
    "val_size_negative",
    "epochs_zero",
    "epochs_negative",
    "batch_size_zero",
    "batch_size_negative",
    "lr_zero",
    "lr_negative",
    "optimizer_unknown",
    "seed_negative",
    "trainer_unknown_key",
    "checkpoint_interval_negative",
    "key_unknown",
    "run_dir_under_a_file",
    "resume_nothing",
    "resume_missing_file",
    "resume_corrupt",
    "resume_crafted_pickle",
    "resume_other_config",
    "multirun_one_impossible_job",
    "eval_unknown_group",
    "eval_ckpt_missing",
    "eval_corrupt",
    "eval_crafted_pickle",
    "eval_other_classes_channels",
    "eval_knn_k_above_database",
    "eval_retrieval_k_above_database",
    "eval_device_unknown",
    "eval_embeddings_missing",
]


def test_case_list_is_complete(files):
    assert sorted(CASE_NAMES) == sorted(_cases(files))
    assert len(CASE_NAMES) >= 25


@pytest.mark.parametrize("name", CASE_NAMES)
def test_bad_input_is_one_line_error(files, results, name):
    _, _, fragments = _cases(files)[name]
    r = results[name]
    assert r["code"] == 2, (name, r)
    stderr = r["stderr"]
    assert "Traceback" not in stderr, stderr[-3000:]
    lines = [ln for ln in stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, stderr[-3000:]
    for frag in fragments:
        assert frag in lines[0], (frag, lines[0])
    # the message is one line and nothing of Hydra's multi-line report is left
    assert "Config search path" not in stderr and "HYDRA_FULL_ERROR" not in stderr


def test_crafted_pickles_never_ran(files, results):
    assert results["resume_crafted_pickle"]["code"] == 2
    assert results["eval_crafted_pickle"]["code"] == 2
    assert not files["marker"].exists()


def test_multirun_records_the_failed_job_and_runs_the_others(files, results):
    assert results["multirun_one_impossible_job"]["code"] == 2
    sweep = files["tmp"] / "sweep"
    bad = json.loads((sweep / "0" / "run.json").read_text())
    good = json.loads((sweep / "1" / "run.json").read_text())
    assert bad["status"] == "failed" and "optim.lr=-1" in bad["error"]
    assert good["status"] == "completed"
    assert "test/top1" in json.loads((sweep / "1" / "metrics.json").read_text())
    rows = json.loads((sweep / "sweep_summary.json").read_text())
    assert [(r["job"], r["status"]) for r in rows] == [(0, "failed"), (1, "completed")]
    assert "optim.lr=-1 must be a positive" in rows[0]["error"] and rows[0]["value"] is None
    assert rows[1]["value"] == json.loads((sweep / "1" / "metrics.json").read_text())["val/top1"]


def test_failed_run_records_status_and_error(files):
    from mrl import MRLError
    from mrl.tasks.train import train

    out = files["tmp"] / "failed"
    with pytest.raises(MRLError, match="optim.lr=-1"):
        train(compose_cfg("train", out, *TINY, "optim.lr=-1"))
    run = json.loads((out / "run.json").read_text())
    assert run["status"] == "failed" and "optim.lr=-1" in run["error"]


def test_hydra_full_error_shows_the_traceback(results):
    r = results["full_error"]
    assert r["code"] != 0 and "Traceback" in r["stderr"] and "Could not find" in r["stderr"]
