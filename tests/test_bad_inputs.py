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
