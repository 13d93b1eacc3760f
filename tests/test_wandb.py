"""W&B as its users expect, checked in the offline run files (``wandb/offline-run-*/``).

The ``.wandb`` transaction log is read record by record (its LevelDB-style framing: 7-byte
header, 32 KiB blocks, chunks with a 7-byte crc/length/type header; each record is a
``wandb_internal_pb2.Record``), which is what ``wandb sync`` uploads later.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import numpy as np
import pytest

from mrl_test_utils import compose_cfg

TINY = (
    "model=timm",
    "model.name=test_efficientnet",
    "data.subset=48",
    "data.val_size=48",
    "data.test_subset=48",
    "trainer.max_epochs=1",
    "callbacks=eval",
    "eval=[knn]",
)


def wandb_records(run_dir: Path) -> list:
    """Every record of the run dir's one offline W&B run, in order."""
    from wandb.proto import wandb_internal_pb2 as pb

    (log,) = Path(run_dir).glob("wandb/offline-run-*/run-*.wandb")
    data, pos, block, buf, out = log.read_bytes(), 7, 32768, b"", []
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # block trailer: padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        chunk, pos = data[pos + 7 : pos + 7 + length], pos + 7 + length
        if kind == 0:
            break
        buf += chunk
        if kind in (1, 4):  # FULL or LAST chunk
            rec = pb.Record()
            rec.ParseFromString(buf)
            out.append(rec)
            buf = b""
    return out


def of_type(records, kind: str) -> list:
    return [getattr(r, kind) for r in records if r.WhichOneof("record_type") == kind]


def keys(items) -> list[str]:
    return [i.key or "/".join(i.nested_key) for i in items]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A tiny training run (W&B offline) and two eval.py runs of its last.ckpt, each into a
    new run dir."""
    from omegaconf import OmegaConf

    from mrl.tasks.evaluate import eval_task
    from mrl.tasks.train import train

    assert os.environ.get("WANDB_MODE") == "offline"
    root = tmp_path_factory.mktemp("wandb")
    out = root / "train"
    cfg = compose_cfg("train", out, *TINY)
    train(cfg)
    (out / ".hydra").mkdir(exist_ok=True)
    OmegaConf.save(cfg, out / ".hydra" / "config.yaml")  # what Hydra's CLI writes
    evals = []
    for name in ("eval_a", "eval_b"):
        ecfg = compose_cfg(
            "eval", root / name, f"ckpt_path={out}/checkpoints/last.ckpt", "eval=[knn]"
        )
        eval_task(ecfg)
        evals.append(root / name)
    return out, evals


def test_training_run_logs_checkpoints_embeddings_plot_and_table(runs):
    out, _ = runs
    recs = wandb_records(out)
    arts = of_type(recs, "artifact")
    models = [a for a in arts if a.type == "model"]
    assert {a.name for a in models} == {f"model-{(out / 'wandb_id.txt').read_text().strip()}"}
    by_file = {json.loads(a.metadata)["file"]: list(a.aliases) for a in models}
    assert "latest" in by_file["last.ckpt"]
    (best,) = [f for f, al in by_file.items() if "best" in al]
    assert best.startswith("epoch") and (out / "checkpoints" / best).is_file()
    assert all(a.manifest.contents[0].path == "model.ckpt" for a in models)
    (emb,) = [a for a in arts if a.type == "embeddings"]
    assert sorted(c.path for c in emb.manifest.contents) == sorted(
        p.name for p in (out / "embeddings").iterdir()
    )
    # the per-prefix tables (test metrics of every run; knn of the eval callback)
    tables = {c.path for a in arts if a.type == "run_table" for c in a.manifest.contents}
    assert {"test/per_prefix.table.json", "eval/per_prefix.table.json"} <= tables
    table = json.loads(
        next(out.glob("wandb/offline-run-*/files/media/table/test/*.json")).read_text()
    )
    metrics = json.loads((out / "metrics.json").read_text())
    assert table["columns"] == ["dim", "test/top1", "test/top5"]
    assert table["data"][0] == [8, metrics["test/top1@d8"], metrics["test/top5@d8"]]
    # the metric-vs-dim PNG as a wandb.Image
    logged = {
        k: json.loads(i.value_json)
        for h in of_type(recs, "history")
        for i, k in zip(h.item, keys(h.item), strict=True)
    }
    assert logged["eval/metric_vs_dim/_type"] == "image-file"
    png = next(out.glob("wandb/offline-run-*")) / "files" / logged["eval/metric_vs_dim/path"]
    assert png.read_bytes() == (out / "plots" / "metric_vs_dim.png").read_bytes()
    # every metric once in the summary, under the metrics.json name (no eval/ copy)
    summary = {k for s in of_type(recs, "summary") for k in keys(s.update)}
    assert {"knn/top1@d8", "test/top1@d8"} <= summary
    assert not [k for k in metrics if f"eval/{k}" in summary]
    record = json.loads((out / "run.json").read_text())
    assert {a["type"] for a in record["wandb_artifacts"]} == {"model", "embeddings"}


def test_eval_runs_are_linked_to_their_training_run(runs):
    out, (ev, _) = runs
    train_id = (out / "wandb_id.txt").read_text().strip()
    (train_run,) = of_type(wandb_records(out), "run")
    recs = wandb_records(ev)
    (run,) = of_type(recs, "run")
    assert run.run_group == train_run.run_group and run.job_type == "eval"
    config = {
        k: json.loads(i.value_json)
        for c in of_type(recs, "config")
        for i, k in zip(c.update, keys(c.update), strict=True)
    }
    link = config["trained_by"]
    assert link["wandb_id"] == train_id and link["run_dir"] == str(out)
    assert link["config"]["model"]["name"] == "test_efficientnet"
    assert link["artifact"] == f"model-{train_id}:latest"  # last.ckpt is what was evaluated
    assert config["eval"]["ckpt_path"].endswith("last.ckpt")
    assert (
        json.loads(
            (ev / "eval.json" if (ev / "eval.json").exists() else ev / "run.json").read_text()
        )["trained_by"]["wandb_id"]
        == train_id
    )
    arts = of_type(recs, "artifact")
    assert [a.type for a in arts if a.type in ("model", "embeddings")] == ["embeddings"]
    summary = {k for s in of_type(recs, "summary") for k in keys(s.update)}
    assert "knn/top1@d8" in summary and "eval/knn/top1@d8" not in summary


@pytest.mark.multiprocess
def test_eval_with_two_processes_is_linked_to_its_training_run(runs, tmp_path):
    """``devices=2``: rank 0 writes the W&B link; the run record gets it back."""
    from mrl.tasks.evaluate import eval_task

    out, _ = runs
    ev = tmp_path / "eval_ddp"
    ecfg = compose_cfg(
        "eval", ev, f"ckpt_path={out}/checkpoints/last.ckpt", "eval=[knn]", "devices=2"
    )
    eval_task(ecfg)
    train_id = (out / "wandb_id.txt").read_text().strip()
    config = {
        k: json.loads(i.value_json)
        for c in of_type(wandb_records(ev), "config")
        for i, k in zip(c.update, keys(c.update), strict=True)
    }
    assert config["trained_by"]["wandb_id"] == train_id
    assert config["trained_by"]["artifact"] == f"model-{train_id}:latest"
    assert config["eval"]["devices"] == 2
    record = json.loads((ev / "run.json").read_text())
    assert record["processes"] == 2
    assert record["trained_by"] == {
        "run_dir": str(out),
        "wandb_id": train_id,
        "artifact": f"model-{train_id}:latest",
        "artifact_used": False,  # offline: the config links it, use_artifact needs a server
    }


def test_second_eval_into_a_new_run_dir_reuses_the_cache(runs):
    out, (first, second) = runs
    assert json.loads((first / "eval_timing.json").read_text())["embeddings_reused"] is False
    assert json.loads((second / "eval_timing.json").read_text())["embeddings_reused"] is True
    listed = json.loads((out / "embedding_caches.json").read_text())["caches"]
    assert str((first / "embeddings").resolve()) in listed
    a, b = first / "embeddings" / "test_x.npy", second / "embeddings" / "test_x.npy"
    assert a.stat().st_ino == b.stat().st_ino  # hard link: no copy, no re-embedding
    np.testing.assert_array_equal(np.load(a), np.load(b))
    m1 = json.loads((first / "metrics.json").read_text())
    m2 = json.loads((second / "metrics.json").read_text())
    assert m1["knn/top1@d8"] == m2["knn/top1@d8"]


def test_online_eval_marks_the_checkpoint_artifact_used():
    """W&B cannot mark use offline; online, link_to_training calls run.use_artifact."""
    from mrl.tasks.instantiate import link_to_training

    used = []

    class Experiment:
        entity, project, config = "me", "mrl", None

        class settings:  # noqa: N801 - wandb's attribute
            _offline = False

        def use_artifact(self, name, type=None):
            used.append((name, type))

    class Config(dict):
        def update(self, d, allow_val_change=False):
            super().update(d)

    class WandbLogger:
        experiment = Experiment()

    WandbLogger.experiment.config = Config()
    link = {"wandb_id": "abc", "artifact": "model-abc:best", "project": "mrl", "run_dir": "/r"}
    out = link_to_training([WandbLogger()], link, {"ckpt_path": "x"})
    assert used == [("me/mrl/model-abc:best", "model")]
    assert out["artifact_used"] is True and WandbLogger.experiment.config["trained_by"] == link
