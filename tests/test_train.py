"""Training from the real configs on real Fashion-MNIST (subsets, so the suite stays fast)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mrl.tasks.train import train
from mrl_test_utils import ROOT, run_cli, run_cli_cases

FAST = ("debug=fast_dev_run", "data.batch_size=8", "data.subset=64", "data.val_size=16")


@pytest.mark.slow
def test_short_run_beats_chance_at_every_prefix(trained_run):
    out, metrics = trained_run
    assert json.loads((out / "metrics.json").read_text()) == pytest.approx(metrics)
    assert (out / "checkpoints" / "last.ckpt").is_file()
    assert (out / "csv" / "metrics.csv").is_file()
    dims = [8, 16, 32, 64, 128, 256, 512]
    for m in dims:
        assert 0.45 < metrics[f"test/top1@d{m}"] <= 1.0, (m, metrics)  # chance is 0.10
        assert 0 <= metrics[f"test/top5@d{m}"] <= 1.0
        assert f"train/loss@d{m}" in metrics
    run = json.loads((out / "run.json").read_text())
    assert run["status"] == "completed" and run["method"] == "MRL" and run["dims"] == dims


@pytest.mark.parametrize("model", ["resnet18", "resnet50", "vit_b16", "vit_s16"])
@pytest.mark.parametrize("method", ["mrl", "mrl_e", "ff"])
def test_fast_dev_run_every_model_and_method(cfg_factory, model, method):
    cfg = cfg_factory(f"model={model}", f"method={method}", *FAST)
    metrics = train(cfg)
    width = {"resnet18": 512, "resnet50": 2048, "vit_b16": 768, "vit_s16": 384}[model]
    run = json.loads((Path(cfg.paths.output_dir) / "run.json").read_text())
    if method == "ff":
        assert run["method"] == f"FF-{width}" and run["dims"] == [width]
    else:
        assert run["method"] == ("MRL-E" if method == "mrl_e" else "MRL")
        assert run["dims"][-1] == width and run["dims"][0] in (8, 12)
    assert set(metrics) >= {f"test/top1@d{m}" for m in run["dims"]}


@pytest.mark.parametrize(
    "preset, blocks, widths",
    [("", 1, [24, 48, 96, 256]), ("_full", 2, [32, 64, 128, 256])],
)
def test_reproduce_table1_presets_train(cfg_factory, preset, blocks, widths):
    """``make reproduce-table1 [PRESET=full]``'s experiments compose and train a step with the
    network they describe (blocks per stage, stage widths, augmentation of the long preset)."""
    from mrl.tasks.train import build_datamodule, build_module

    cfg = cfg_factory(f"experiment=table1_fashion_mnist{preset}", *FAST)
    assert cfg.data.augment is (preset == "_full")
    module = build_module(cfg, build_datamodule(cfg))
    net = module.net.backbone.model
    stages = [getattr(net, f"layer{i}") for i in range(1, 5)]
    assert [len(s) for s in stages] == [blocks] * 4
    assert [s[-1].conv2.out_channels for s in stages] == widths
    metrics = train(cfg)
    run = json.loads((Path(cfg.paths.output_dir) / "run.json").read_text())
    assert run["global_step"] == 1 and run["dims"] == [8, 16, 32, 64, 128, 256]
    assert set(metrics) >= {f"test/top1@d{m}" for m in run["dims"]}


def test_ff_k_reads_only_first_k(cfg_factory):
    cfg = cfg_factory("method=ff", "mrl.ff_dim=32", *FAST)
    train(cfg)
    run = json.loads((Path(cfg.paths.output_dir) / "run.json").read_text())
    assert run["method"] == "FF-32" and run["dims"] == [32]
    # the behaviour: features beyond k change nothing and get no gradient; one below k does
    import torch

    from mrl.tasks.train import build_datamodule, build_module

    module = build_module(cfg, build_datamodule(cfg))  # the module this config trains
    head = module.net.head
    z = torch.randn(16, module.net.embed_dim, requires_grad=True)
    base = head(z)
    assert list(base) == [32]
    beyond, below = z.detach().clone(), z.detach().clone()
    beyond[:, 32:] += 10.0 * torch.randn_like(beyond[:, 32:])
    below[:, 31] += 10.0
    assert torch.equal(head(beyond)[32], base[32].detach())
    assert not torch.allclose(head(below)[32], base[32].detach())
    base[32].sum().backward()
    assert z.grad[:, 32:].abs().max() == 0 and z.grad[:, :32].abs().max() > 0


VIT_2048 = ["model=vit_b16", "mrl.dims=[8,16,...,2048]", *FAST]


def test_cli_vit_with_projection_to_2048(cli_results):
    r = cli_results["vit_2048"]
    assert r["code"] == 0, r["stderr"][-3000:]
    assert "adding a linear projection 768 -> 2048" in r["stdout"] + r["stderr"]
    vit = cli_results["vit_2048_dir"]
    metrics = json.loads((vit / "metrics.json").read_text())
    assert {f"test/top1@d{m}" for m in (8, 16, 32, 64, 128, 256, 512, 1024, 2048)} <= set(metrics)
    assert (vit / ".hydra" / "config.yaml").is_file()


BAD_INPUTS = [
    ("mrl.dims=[8,16,...,100]", "cannot reach 100"),
    ("mrl.dims=[]", "is empty"),
    ("mrl.dims=[16,8]", "strictly increasing"),
    ("mrl.dims=[8,8,16]", "duplicate"),
    ("mrl.dims=[0,8]", "not a positive"),
    ("mrl.weights=[1,2]", "one weight per dim"),
    ("model.name=resnet_does_not_exist", "is not a timm model"),
    ("optim.lr=-1", "optim.lr=-1"),
    ("trainer.max_epochs=0", "trainer.max_epochs=0"),
    ("data.batch_size=0", "batch_size"),
]


def _assert_one_line_error(code: int, stderr: str, fragment: str) -> None:
    assert code == 2, (code, stderr[-2000:])
    lines = [ln for ln in stderr.strip().splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and fragment in lines[0], stderr[-2000:]
    assert "Traceback" not in stderr


@pytest.fixture(scope="module")
def cli_results(tmp_path_factory):
    """``python train.py <args>`` for the CLI cases of this module (every bad input and the
    ViT run), one after another in one subprocess (``run_cli_cases``)."""
    tmp = tmp_path_factory.mktemp("train_cli")
    cases = [
        (o, "train.py", [o, "logger=csv", f"hydra.run.dir={tmp}/bad{i}"], {})
        for i, (o, _) in enumerate(BAD_INPUTS)
    ]
    cases.append(("vit_2048", "train.py", [*VIT_2048, f"hydra.run.dir={tmp}/vit"], {}))
    return {**run_cli_cases(cases, tmp / "driver"), "vit_2048_dir": tmp / "vit"}


@pytest.mark.parametrize("override, fragment", BAD_INPUTS)
def test_cli_bad_input_is_one_line_error(cli_results, override, fragment):
    r = cli_results[override]
    _assert_one_line_error(r["code"], r["stderr"], fragment)


def test_multirun_default_sweep_dir_jobs_wandb_runs_and_summary(tmp_path):
    """The README's sweep as a user types it: no hydra.sweep.dir, run from another folder."""
    r = run_cli(
        str(ROOT / "train.py"),
        "-m",
        "mrl.efficient=false,true",
        "data.batch_size=8",
        "data.subset=64",
        "data.val_size=16",
        "trainer.max_epochs=1",
        "trainer.limit_train_batches=2",
        "trainer.limit_val_batches=1",
        "trainer.limit_test_batches=1",
        cwd=tmp_path,
        env={"WANDB_MODE": "offline"},
    )
    assert r.returncode == 0, r.stderr[-3000:]
    sweeps = list((tmp_path / "logs" / "train" / "multiruns").iterdir())
    assert len(sweeps) == 1, sweeps
    sweep = sweeps[0]
    runs = sorted(sweep.glob("[0-9]*"))
    assert [p.name for p in runs] == ["0", "1"]
    methods = [json.loads((p / "run.json").read_text())["method"] for p in runs]
    assert methods == ["MRL", "MRL-E"]
    wandb_ids = set()
    for p in runs:
        assert "test/top1@d512" in json.loads((p / "metrics.json").read_text())
        assert (p / "checkpoints" / "last.ckpt").is_file()
        offline = list((p / "wandb").glob("offline-run-*"))
        assert len(offline) == 1, list((p / "wandb").iterdir())
        wandb_ids.add(offline[0].name.rsplit("-", 1)[-1])
    assert len(wandb_ids) == 2
    # the summary at the sweep root: one row per job, the optimised (validation) metric
    rows = json.loads((sweep / "sweep_summary.json").read_text())
    assert [r["job"] for r in rows] == [0, 1]
    assert [r["overrides"][0] for r in rows] == ["mrl.efficient=False", "mrl.efficient=True"]
    for row, p in zip(rows, runs, strict=True):
        assert row["status"] == "completed" and row["metric"] == "val/top1"
        assert row["value"] == json.loads((p / "metrics.json").read_text())["val/top1"]
        assert row["run_dir"] == str(p.resolve())
    table = (sweep / "sweep_summary.md").read_text()
    assert "| 1 | mrl.efficient=True" in table and "val/top1" in table


def test_existing_run_dir_is_not_overwritten(tmp_path):
    out = tmp_path / "keep"
    (out / "checkpoints").mkdir(parents=True)
    (out / "checkpoints" / "last.ckpt").write_bytes(b"precious")
    r = run_cli("train.py", *FAST, f"hydra.run.dir={out}")  # its own ``python train.py``
    _assert_one_line_error(r.returncode, r.stderr, "ckpt_path=last")
    assert (out / "checkpoints" / "last.ckpt").read_bytes() == b"precious"
