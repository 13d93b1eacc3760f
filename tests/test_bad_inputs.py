"""Bad inputs found by trying the commands as a new user would: each ends in one line that
names the value and what is valid, before anything expensive runs."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from mrl.core.errors import MRLError
from mrl_test_utils import ROOT


def test_an_image_folder_with_one_class_is_refused(tmp_path):
    from mrl.data import ImageFolderDataModule

    (tmp_path / "only").mkdir()
    for i in range(4):
        Image.fromarray(np.full((8, 8, 3), i, np.uint8)).save(tmp_path / "only" / f"{i}.png")
    with pytest.raises(MRLError, match=r"one class folder \('only'\).*at least 2"):
        ImageFolderDataModule(tmp_path)


def test_a_vision_transformer_on_tiny_images_names_the_size():
    from mrl.models import Backbone

    with pytest.raises(MRLError, match="image size 6 is too small for vit_tiny_patch16_224"):
        Backbone("vit_tiny_patch16_224", in_chans=3, img_size=6)


def test_eval_on_cuda_without_a_gpu_is_one_line(monkeypatch):
    from mrl.tasks.evaluate import _device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(MRLError, match="device=cuda but no CUDA GPU is visible"):
        _device("cuda")
    assert _device("auto").type == "cpu" and _device("cpu").type == "cpu"


class _Broken(Dataset):
    def __len__(self) -> int:
        return 4

    def __getitem__(self, i: int):
        raise MRLError("cannot read image /data/x.png (truncated); fix or delete it")


def test_an_error_inside_a_dataloader_worker_keeps_its_one_line():
    with pytest.raises(MRLError) as info:
        list(DataLoader(_Broken(), num_workers=1))
    assert str(info.value) == "cannot read image /data/x.png (truncated); fix or delete it"


def test_a_last_training_batch_of_one_is_dropped_for_batchnorm():
    from mrl.data import FashionMNISTDataModule

    dm = FashionMNISTDataModule(subset=65, val_size=16, batch_size=16, num_workers=0)
    dm.setup("fit")
    n = len(dm.dataset("train"))
    assert n % 16 == 1
    loader = dm.train_dataloader()
    assert loader.drop_last and len(loader) == n // 16
    assert not dm.test_dataloader().drop_last  # evaluation keeps every sample


def _reproduce():
    spec = importlib.util.spec_from_file_location("reproduce", ROOT / "scripts" / "reproduce.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    "argv, says",
    [
        (
            ["--seeds", "0", "trainer.max_epoch=1"],
            "Could not override 'trainer.max_epoch'",
        ),
        (
            ["--experiment", "table1_cifar10", "--seeds", "0"],
            "'table1_cifar10' is not a config in group 'experiment'",
        ),
    ],
)
def test_reproduce_with_a_typo_or_a_missing_experiment_is_one_line(tmp_path, capsys, argv, says):
    assert _reproduce().main([*argv, "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and says in err[0], err


def test_a_full_disk_while_writing_a_checkpoint_is_one_line(tmp_path, monkeypatch):
    """torch's zip writer reports ENOSPC as ``RuntimeError: ... unexpected pos``; the
    checkpoint writer turns it back into the OSError the one-line hint knows."""
    import errno

    from mrl.cli import user_message
    from mrl.run import checkpoints

    def full_disk(obj, f):
        f.write(b"partial")
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos")  # noqa: B904 - as torch raises it

    monkeypatch.setattr(checkpoints.torch, "save", full_disk)
    target = tmp_path / "checkpoints" / "last.ckpt"
    with pytest.raises(OSError) as info:
        checkpoints.atomic_torch_save({"a": 1}, target)
    assert info.value.errno == errno.ENOSPC and info.value.filename == str(target)
    message = user_message(info.value)
    assert message.startswith(f"cannot use {target}: No space left on device (the disk is full)")
    assert not list(target.parent.iterdir())  # no half-written temp file left behind


def test_unknown_setting_is_one_line_naming_the_valid_ones():
    """``+data.split=...`` on a data module without that setting: one line naming it and the
    settings the class (and its base classes) take, not Hydra's wrapped TypeError."""
    from omegaconf import OmegaConf

    from mrl.tasks.instantiate import instantiate

    node = OmegaConf.create({"data": {"_target_": "mrl.data.FashionMNISTDataModule", "split": 1}})
    with pytest.raises(MRLError) as info:
        instantiate(node.data)
    msg = str(info.value)
    assert msg.startswith("data.split is not a setting of FashionMNISTDataModule; valid settings:")
    assert "augment" in msg and "batch_size" in msg  # its own and MRLDataModule's
    assert "\n" not in msg


def test_user_message_terminates_on_a_looping_exception_chain():
    """An exception that is its own cause (``raise e from e``) once made the error wrapper
    loop forever; the message is now produced."""
    from hydra.errors import InstantiationException

    from mrl.cli import user_message

    e = InstantiationException("Error in call to target 'x': TypeError('boom')")
    e.__cause__ = e
    assert "boom" in user_message(e)


def test_evaluator_sizes_are_checked_before_training_or_embedding(tmp_path, trained_run):
    """``callbacks=eval`` on 16 images is refused before training, and ``eval.py`` with a
    neighbour count larger than the database before the embedding pass."""
    from mrl_test_utils import run_cli_cases

    run_dir, _ = trained_run
    ckpt = f"ckpt_path={run_dir}/checkpoints/last.ckpt"
    results = run_cli_cases(
        [
            (
                "train",
                "train.py",
                [
                    "callbacks=eval",
                    "eval=[knn]",
                    "data.subset=16",
                    "data.val_size=4",
                    "logger=csv",
                    f"hydra.run.dir={tmp_path}/t",
                ],
                {},
            ),
            (
                "eval",
                "eval.py",
                [
                    ckpt,
                    "eval=[retrieval]",
                    "eval.retrieval.ks=[10,100]",
                    "data_overrides.subset=50",
                    f"hydra.run.dir={tmp_path}/e",
                ],
                {},
            ),
        ],
        tmp_path / "driver",
    )
    for name, want in (
        (
            "train",
            "eval.knn needs k=20 neighbours per query but the database (the train split) "
            "has 16 items",
        ),
        (
            "eval",
            "eval.retrieval needs k=100 neighbours per query but the database (the train "
            "split) has 50 items",
        ),
    ):
        r = results[name]
        assert r["code"] == 2 and r["stderr"].strip().splitlines() == [
            f"error: {want}; use k <= {want.split()[-2]} or more data (data.subset)"
        ], (name, r["stderr"][-2000:])
    assert not (tmp_path / "t" / "checkpoints").exists()  # refused before training
    assert not (tmp_path / "e" / "embeddings").exists()  # refused before the embedding pass


def test_check_sizes_names_the_evaluator_and_the_limit():
    from mrl.eval.adaptive import AdaptiveRetrieval
    from mrl.eval.knn import KNN
    from mrl.eval.registry import check_sizes

    sizes = {"train": 16, "val": 0, "test": 100}
    check_sizes({"knn": KNN(k=16)}, sizes, 10, 64)  # exactly the database size is fine
    with pytest.raises(MRLError, match=r"^eval.adaptive_ret funnel=.*keeps 200 .* 16 items"):
        check_sizes({"adaptive_ret": AdaptiveRetrieval()}, sizes, 10, 64)
    with pytest.raises(MRLError, match=r"^eval.adaptive_ret .*64"):
        check_sizes(
            {"adaptive_ret": AdaptiveRetrieval(d_shortlist=128, shortlist_k=8)}, sizes, 10, 64
        )
    from mrl.eval.adaptive import AdaptiveClassification

    with pytest.raises(MRLError, match=r"^eval.adaptive_cls needs a validation split"):
        check_sizes({"adaptive_cls": AdaptiveClassification()}, sizes, 10, 64)
