"""The evaluator registry: one module plus one config file adds an evaluator; the training
callback and eval.py build the same evaluators from the same files and agree."""

from __future__ import annotations

import json
import textwrap

import numpy as np

from mrl.data.fashion_mnist import find_idx_files
from mrl.data.idx import read_idx
from mrl_test_utils import run_cli, run_cli_cases

TOY_MODULE = '''
import numpy as np
from mrl.eval.registry import Evaluator


class PositiveFraction(Evaluator):
    """toy/pos@d{m}: the fraction of test entries above `threshold` in the first m dims."""

    main_metric = "toy/pos"

    def __init__(self, threshold):
        self.threshold = threshold

    def __call__(self, data, dims):
        x = np.asarray(data.test_x)
        return {f"toy/pos@d{m}": float((x[:, :m] > self.threshold).mean()) for m in dims}
'''


def _pixels(tmp_path):
    """Real Fashion-MNIST pixels (784-d, scaled to [0, 1]) as embeddings, saved as .npz."""
    files = find_idx_files("/usr/share/datasets/fashion-mnist") or find_idx_files(tmp_path / "none")
    assert files, "Fashion-MNIST IDX files are needed (make data)"
    x = read_idx(files["train_images"])[:600].reshape(600, -1).astype(np.float32) / 255
    y = read_idx(files["train_labels"])[:600].astype(np.int64)
    path = tmp_path / "pixels.npz"
    np.savez(path, train_x=x[:400], train_y=y[:400], test_x=x[400:], test_y=y[400:])
    return path, x[400:]


def test_a_new_evaluator_is_one_module_and_one_config(tmp_path):
    emb, test_x = _pixels(tmp_path)
    (tmp_path / "toy_evaluator.py").write_text(TOY_MODULE)
    conf = tmp_path / "myconf" / "eval"
    conf.mkdir(parents=True)
    (conf / "toy.yaml").write_text(
        textwrap.dedent(
            """\
            toy:
              _target_: toy_evaluator.PositiveFraction
              threshold: 0.5
            """
        )
    )
    out = tmp_path / "run"
    r = run_cli(
        "eval.py",
        f"embeddings={emb}",
        "eval=[toy,knn]",
        "dims=[16,784]",
        f"hydra.searchpath=[file://{tmp_path / 'myconf'}]",
        "logger=csv",
        f"hydra.run.dir={out}",
        env={"PYTHONPATH": str(tmp_path)},
    )
    assert r.returncode == 0, r.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    for m in (16, 784):  # the config's setting reached the class; the value is the numpy one
        assert metrics[f"toy/pos@d{m}"] == float((test_x[:, :m] > 0.5).mean())
        assert 0.3 < metrics[f"knn/top1@d{m}"] <= 1  # a built-in evaluator beside it
    assert "toy/pos" in r.stdout  # its main metric is reported in the per-prefix table


FAST = [
    "data.subset=256",
    "data.val_size=64",
    "data.test_subset=200",
    "data.batch_size=32",
    "trainer.limit_train_batches=3",
    "logger=csv",
    "callbacks.rich_progress_bar=null",
]


def test_training_callback_and_eval_py_agree(tmp_path):
    run = tmp_path / "train"
    train = [*FAST, "callbacks=eval", "eval=[knn,retrieval,linear]", f"hydra.run.dir={run}"]
    evaluate = [
        f"ckpt_path={run}/checkpoints/last.ckpt",
        "eval=[knn,retrieval,linear]",
        "logger=csv",
        f"hydra.run.dir={tmp_path / 'eval'}",
    ]
    # ``python train.py ...`` then ``python eval.py ...``, one after the other in one subprocess
    # (the training run's metrics.json is read back right after train.py, before eval.py)
    results = run_cli_cases(
        [
            ("train", "train.py", train, {}, [run / "metrics.json"]),
            ("eval", "eval.py", evaluate, {}),
        ],
        tmp_path / "driver",
    )
    for name, r in results.items():
        assert r["code"] == 0, (name, r["stderr"][-3000:])
    during = json.loads(results["train"]["files"][str(run / "metrics.json")])
    after = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    keys = [k for k in after if k.startswith(("knn/", "retrieval/", "linear/"))]
    assert len(keys) == 7 * (2 + 12 + 1)  # 7 prefixes: kNN 2, retrieval 3 x 4 ks, linear 1
    assert {k: during[k] for k in keys} == {k: after[k] for k in keys}
