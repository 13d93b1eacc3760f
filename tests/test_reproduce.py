"""The ImageNet path of `make reproduce-table1` on a tiny fake ImageFolder, so it cannot rot."""

from __future__ import annotations

import importlib.util
import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mrl.results import read_csv
from mrl_test_utils import compose_cfg, run_cli

CPU = [
    "trainer.accelerator=cpu",
    "trainer.devices=1",
    "trainer.strategy=auto",
    "trainer.sync_batchnorm=false",
    "trainer.precision=32-true",
    "data.num_workers=0",
    "data.img_size=64",
    "data.batch_size=4",
    "data.val_size=4",
]


@pytest.fixture(scope="module")
def fake_imagenet(tmp_path_factory):
    root = tmp_path_factory.mktemp("imagenet")
    rng = np.random.default_rng(0)
    for split, n in (("train", 8), ("val", 3)):
        for c in range(3):
            d = root / split / f"n0000{c}"
            d.mkdir(parents=True)
            for i in range(n):
                arr = rng.integers(0, 255, (72, 80, 3), dtype=np.uint8)
                arr[..., c] = 200  # a learnable colour cue per class
                Image.fromarray(arr).save(d / f"img{i}.JPEG")
    return root


def test_imagenet_experiment_fast_dev_run(fake_imagenet, tmp_path):
    from mrl.tasks.train import train

    cfg = compose_cfg(
        "train",
        tmp_path / "r",
        "experiment=table1_imagenet",
        f"data.root={fake_imagenet}",
        "debug=fast_dev_run",
        *CPU,
    )
    assert cfg.optim.lr == 0.425 and cfg.trainer.max_epochs == 1  # fast_dev_run overrides 40
    metrics = train(cfg)
    run = json.loads((tmp_path / "r" / "run.json").read_text())
    assert run["model"] == "resnet50" and run["dims"] == [8, 16, 32, 64, 128, 256, 512, 1024, 2048]
    assert "test/top1@d2048" in metrics


def test_imagenet_slim_net_is_a_slimmable_resnet50(fake_imagenet, tmp_path):
    """Slim. Net follows model=: the paper's setting gives bottlenecks and width 2048, read
    at every prefix 8..2048 (the paper's protocol) plus each width whole."""
    from mrl.objectives.slimmable import SlimmableLitModule
    from mrl.tasks.train import train

    cfg = compose_cfg(
        "train",
        tmp_path / "r",
        "experiment=table1_imagenet",
        "objective=slimmable",
        f"data.root={fake_imagenet}",
        "debug=fast_dev_run",
        *CPU,
    )
    metrics = train(cfg)
    run = json.loads((tmp_path / "r" / "run.json").read_text())
    assert run["method"] == "Slim. Net"
    assert {f"test/top1@d{m}" for m in (8, 16, 32, 64, 128, 256, 512, 1024, 2048)} <= set(metrics)
    assert {f"test/subnet_top1@d{m}" for m in (512, 1024, 1536, 2048)} <= set(metrics)
    module = SlimmableLitModule(3, 3, 64, **{k: v for k, v in _slim_kwargs(cfg).items()})
    assert module.net.block == "bottleneck" and module.net.num_features == 2048
    assert [len(s) for s in module.net.stages] == [3, 4, 6, 3]
    assert (
        sum(p.numel() for p in module.net.parameters()) > 20e6
    )  # ResNet-50 (23.5M), not -18 (11M)


def _slim_kwargs(cfg):
    from omegaconf import OmegaConf

    obj = OmegaConf.to_container(cfg.objective, resolve=True)
    return {k: v for k, v in obj.items() if not k.startswith("_") and k != "optim"}


def test_slurm_launcher_composes(tmp_path):
    from hydra import compose, initialize_config_dir

    from mrl_test_utils import CONF

    with initialize_config_dir(str(CONF), version_base="1.3"):
        cfg = compose(
            "train",
            overrides=[
                "experiment=table1_imagenet",
                "hydra/launcher=slurm",
                "trainer.devices=4",
                "trainer.num_nodes=2",
            ],
            return_hydra_config=True,
        )
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert launcher.tasks_per_node == 4 and launcher.gpus_per_node == 4 and launcher.nodes == 2
    assert launcher.max_num_timeout > 0  # pre-empted jobs are requeued (resume: ckpt_path=auto)


@pytest.mark.slow
def test_reproduce_pipeline_on_fake_imagenet(fake_imagenet, tmp_path):
    limits = [
        "trainer.max_epochs=1",
        "trainer.limit_train_batches=1",
        "trainer.limit_val_batches=1",
        "trainer.limit_test_batches=1",
        "mrl.dims=[8,16,32]",  # 3 FF-k runs: FF-8, FF-16, FF-32 (FF-max)
        "+model.channels=[8,16,32,64]",
        "+model.stem_width=8",
        "callbacks.mrl_eval.extra_dims=[8,16,32]",
        "logger=csv",  # W&B logging of sweeps is tested in test_train.py
    ]
    dims = (8, 16, 32)
    r = run_cli(
        "scripts/reproduce.py",
        "--experiment",
        "table1_imagenet",
        "--data",
        "imagenet",
        "--out",
        str(tmp_path / "res"),
        "--seeds",
        "0",
        f"data.root={fake_imagenet}",
        *CPU,
        *limits,
        timeout=900,
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    t1 = read_csv(tmp_path / "res" / "table1_imagenet.csv")
    cells = {(row["method"], row["dim"]): row["top1"] for row in t1}
    for meth in ("MRL", "MRL-E", "FF"):
        for m in dims:
            assert cells[(meth, m)] is not None and 0 <= cells[(meth, m)] <= 100, (meth, m)
    # 3 classes: from rank 3 on, SVD is the full-rank classifier, so every cell is FF-max's head
    assert cells[("SVD", 8)] is not None and cells[("SVD", 8)] == cells[("SVD", 32)]
    assert cells[("Rand. LP", 8)] is not None
    # Slim. Net ran through train.py like the others (its own run dir, record and checkpoint)
    (slim,) = (tmp_path / "res" / "runs" / "table1_imagenet" / "slim" / "seed0").glob("[0-9]*")
    assert json.loads((slim / "run.json").read_text())["method"] == "Slim. Net"
    assert (slim / "checkpoints" / "last.ckpt").is_file()
    assert 0 <= cells[("Slim. Net", 32)] <= 100 and 0 <= cells[("Slim. Net", 8)] <= 100
    t2 = {
        (row["method"], row["dim"]): row["top1"]
        for row in read_csv(tmp_path / "res" / "table2_imagenet.csv")
    }
    assert t2[("Rand. FS", 16)] is not None and t2[("MRL", 32)] is not None
    md = (tmp_path / "res" / "table1_imagenet.md").read_text()
    assert "(66.63," in md  # the paper's value beside ours for ImageNet
    # two sweeps at a time on a CPU (the default): each sweep's output is in seed<s>.log
    logs = sorted((tmp_path / "res" / "runs" / "table1_imagenet").glob("*/seed0.log"))
    assert [p.parent.name for p in logs] == ["ff", "mrl", "slim"]
    assert "2 at a time" in r.stdout

    def reused_in_logs() -> int:  # FF-max's sweep (seed0_max) logs beside FF-k's
        every = (tmp_path / "res" / "runs" / "table1_imagenet").glob("*/seed0*.log")
        return sum(p.read_text().count("already completed") for p in every)

    before = reused_in_logs()
    # rerun: every finished run is reused, nothing is retrained
    r2 = run_cli(
        "scripts/reproduce.py",
        "--experiment",
        "table1_imagenet",
        "--data",
        "imagenet",
        "--out",
        str(tmp_path / "res"),
        "--seeds",
        "0",
        f"data.root={fake_imagenet}",
        *CPU,
        *limits,
        timeout=900,
    )
    assert r2.returncode == 0, r2.stderr[-3000:]
    # every run: MRL, MRL-E, each FF-k, Slim. Net and the baselines
    runs = 2 + len(dims) + 1 + 1
    reused = reused_in_logs() - before + r2.stdout.count("reusing")
    assert reused >= runs, r2.stdout[-3000:]


def test_failed_stage_exits_nonzero_with_tables_written(tmp_path):
    """No network trained (all training stages skipped): the baselines stage has no FF-max,
    fails, is counted in the exit status, and the tables are still written, cells marked."""
    r = run_cli(
        "scripts/reproduce.py",
        "--out",
        str(tmp_path / "res"),
        "--seeds",
        "0,1",
        "--skip",
        "mrl",
        "ff",
        "slim",
        timeout=300,
    )
    assert r.returncode == 1, r.stdout[-2000:] + r.stderr[-2000:]
    assert "failed stages" in r.stderr and "baselines (seed 0)" in r.stderr
    md = (tmp_path / "res" / "table1_fashion_mnist.md").read_text()
    assert "Not completed" in md and "baselines (seed 1)" in md
    rows = read_csv(tmp_path / "res" / "table1_fashion_mnist.csv")
    assert rows and all(row["top1"] is None for row in rows)
    rec = json.loads(
        (
            tmp_path / "res" / "runs" / "table1_fashion_mnist" / "baselines" / "seed1" / "run.json"
        ).read_text()
    )
    assert rec["status"] == "failed" and rec["seed"] == 1
    assert "| 8 | failed | failed |" in md  # Rand. LP and SVD come from the failed baselines
    r = run_cli("scripts/reproduce.py", "--seeds", "0,x", "--out", str(tmp_path / "r2"))
    assert r.returncode == 2 and "--seeds='0,x'" in r.stderr
    r = run_cli("scripts/reproduce.py", "--jobs", "0", "--out", str(tmp_path / "r3"))
    assert r.returncode == 2 and r.stderr.strip().endswith(
        "--jobs=0: give a number of processes >= 1"
    )
    assert not (tmp_path / "r3").exists()


def test_reproduce_paper_adaptive_stage_on_a_trained_run(trained_run, tmp_path):
    """The adaptive stage (Figure 6 / Table 3 analogues) on a real trained MRL run laid out as
    a Table 1 run: the cascade at the largest budget is at least the largest fixed prefix (it
    includes the all-largest operating point), the fixed-size column equals the heads' own
    accuracy, and the FLOP ratio is n*d / (n*D_s + K*d)."""
    import shutil
    import sys

    from mrl.data import FashionMNISTDataModule
    from mrl.data.base import follow_model_transforms
    from mrl.eval.cache import compute_embeddings, save_embeddings
    from mrl.eval.linear import head_logits
    from mrl.tasks.evaluate import load_module
    from mrl_test_utils import ROOT

    sys.path.insert(0, str(ROOT / "scripts"))
    import reproduce_paper

    run_dir, _ = trained_run
    out = tmp_path / "results"
    run = out / "runs" / "table1_fashion_mnist" / "mrl" / "0"
    shutil.copytree(run_dir, run, ignore=shutil.ignore_patterns("wandb", "csv"))
    module = load_module(run / "checkpoints" / "last.ckpt")
    dm = FashionMNISTDataModule(subset=1000, val_size=300, test_subset=500, batch_size=250)
    follow_model_transforms(dm, module)
    arrays = compute_embeddings(module, dm)
    save_embeddings(run / "embeddings", arrays, {"test": True})

    rows = reproduce_paper.adaptive([0], out)
    cls = {(r["method"], r["dim"]): r["value"] for r in rows if r["table"].startswith("top-1")}
    dims = sorted(module.dims)
    assert {d for _, d in cls} == set(dims)
    logits = head_logits(module, arrays["test_x"])
    for m in dims:
        fixed = 100 * np.mean(logits[m].argmax(1) == arrays["test_y"])
        assert cls[("MRL, fixed size", m)] == pytest.approx(fixed, abs=0.01)
    assert cls[("MRL, adaptive", dims[-1])] >= cls[("MRL, fixed size", dims[-1])]
    n, width = arrays["train_x"].shape
    flops = {r["dim"]: r["value"] for r in rows if r["method"] == "FLOPs"}
    for ds in reproduce_paper.SHORTLIST_DIMS:
        assert flops[ds] == pytest.approx(n * width / (n * ds + 200 * width), abs=0.01)
    exact = {r["value"] for r in rows if r["method"] == "exact"}
    assert len(exact) == 1  # the same exact search at every shortlist size

    spec = reproduce_paper.EXPERIMENTS["adaptive"]
    claims = reproduce_paper.table_claims(spec, rows)
    assert [c.a for c in claims["top-1 at expected dims <= size"]] == ["MRL, adaptive"]
    assert [c.a for c in claims["retrieval mAP@10 (%)"]] == ["funnel"]
    assert "retrieval speed-up vs exact (x)" not in claims
    files = reproduce_paper.write_outputs(
        "adaptive", rows, out, spec["columns"], spec["title"], claims, spec["notes"]
    )
    assert [f.name for f in files if f.is_file()] == [
        "adaptive_fashion_mnist.csv",
        "adaptive_fashion_mnist.md",
        "adaptive_fashion_mnist.png",
    ]
    md = files[1].read_text()
    assert "the cascade is at least as accurate" in md and "MRL, adaptive" in md


def test_reproduce_paper_as_a_command_counts_failed_stages(tmp_path):
    """``python scripts/reproduce_paper.py`` as a user runs it: a stage with no Table 1 runs to
    read fails with one line naming what to run first, and the exit status counts it."""
    r = run_cli(
        "scripts/reproduce_paper.py", "--only", "adaptive", "--seeds", "0", "--out", str(tmp_path)
    )
    assert r.returncode == 1, r.stdout[-2000:] + r.stderr[-2000:]
    text = r.stdout + r.stderr
    assert "no completed MRL run for seed 0" in text and "make reproduce-table1" in text
    assert "failed stages: adaptive" in text
    r = run_cli("scripts/reproduce_paper.py", "--only", "nope", "--out", str(tmp_path))
    assert r.returncode == 2 and r.stderr.strip().startswith("error: --only='nope'")


def test_follow_up_work_runs_in_its_sweeps_slot_and_is_counted(tmp_path, monkeypatch):
    """reproduce.run_sweeps: a task's follow-up (the baselines after FF-max) runs right after
    its own sweep, in the same slot while the other slot trains, even when the sweep failed;
    every failure (sweep or follow-up) is returned by name."""
    spec = importlib.util.spec_from_file_location(
        "reproduce", Path(__file__).resolve().parents[1] / "scripts" / "reproduce.py"
    )
    rep = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(rep)
    events: list[str] = []
    lock = threading.Lock()

    def fake_sweep(name, sweep_dir, experiment, args, log=None, threads=None):
        with lock:
            events.append(f"start {name}")
        time.sleep(0.3 if name == "long" else 0.05)
        with lock:
            events.append(f"end {name}")
        assert log == sweep_dir.with_suffix(".log") and threads >= 1
        return 1 if name == "broken" else 0

    def follow(tag: str, ok: bool):
        def then():
            with lock:
                events.append(f"then {tag}")
            return None if ok else f"{tag} failed"

        return then

    monkeypatch.setattr(rep, "train_sweep", fake_sweep)
    tasks = [
        ("long", tmp_path / "a", [], None),
        ("broken", tmp_path / "b", [], follow("b", ok=False)),
        ("short", tmp_path / "c", [], follow("c", ok=True)),
    ]
    failures = rep.run_sweeps(tasks, "table1_fashion_mnist", jobs=2)
    assert failures == ["broken", "b failed"]
    # each follow-up straight after its own sweep, while "long" still trains in the other slot
    assert events.index("then b") == events.index("end broken") + 1
    assert events.index("then c") == events.index("end short") + 1
    assert events[-1] == "end long"
