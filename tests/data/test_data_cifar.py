"""CIFARDataModule on fake pickles (no network) and its error paths."""

from __future__ import annotations

import pytest
import torch

from mrl.core.errors import MRLError
from mrl.data import DATAMODULES, CIFAR100DataModule, CIFARDataModule, build_datamodule
from mrl_data_helpers import make_cifar


def test_cifar10_tensor_pipeline(tmp_path):
    make_cifar(tmp_path, "cifar10", n_train=50, n_test=10)
    dm = CIFARDataModule("cifar10", root=tmp_path, download=False, val_size=10, batch_size=8)
    assert (dm.name, dm.num_classes, dm.in_chans, dm.img_size) == ("cifar10", 10, 3, 32)
    assert dm.split_sizes() == {"train": 40, "val": 10, "test": 10}
    assert dm.classes == [f"c{i}" for i in range(10)]
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (8, 3, 32, 32) and y.shape == (8,)
    x, _ = next(iter(dm.train_eval_dataloader()))
    assert x.shape == (8, 3, 32, 32)


def test_cifar100_with_timm_config(tmp_path):
    make_cifar(tmp_path, "cifar100", n_train=30, n_test=10)
    dm = CIFAR100DataModule(root=tmp_path, download=False, val_size=0.2, batch_size=4)
    assert dm.num_classes == 100
    dm.set_data_config(
        {
            "input_size": (3, 64, 64),
            "interpolation": "bicubic",
            "mean": (0.5, 0.5, 0.5),
            "std": (0.25, 0.25, 0.25),
            "crop_pct": 0.9,
        }
    )
    assert dm.img_size == 64
    assert dm.split_sizes() == {"train": 24, "val": 6, "test": 10}
    for loader in (dm.train_dataloader(), dm.val_dataloader(), dm.test_dataloader()):
        x, y = next(iter(loader))
        assert x.shape == (4, 3, 64, 64) and y.dtype == torch.long


def test_missing_without_download(tmp_path):
    dm = CIFARDataModule("cifar10", root=tmp_path / "none", download=False)
    with pytest.raises(MRLError) as err:
        dm.setup()
    assert str(tmp_path / "none") in str(err.value) and "download=true" in str(err.value)


def test_download_failure_names_root(tmp_path, monkeypatch):
    import torchvision.datasets

    class Offline:
        def __init__(self, *a, **k):
            raise OSError("Network is unreachable")

    monkeypatch.setattr(torchvision.datasets, "CIFAR100", Offline)
    dm = CIFARDataModule("cifar100", root=tmp_path / "c")
    with pytest.raises(MRLError) as err:
        dm.prepare_data()
    msg = str(err.value)
    assert str(tmp_path / "c") in msg and "Network is unreachable" in msg and "\n" not in msg


def test_corrupt_pickle(tmp_path):
    make_cifar(tmp_path, "cifar10", n_train=50, n_test=10)
    bad = tmp_path / "cifar-10-batches-py" / "data_batch_3"
    bad.write_bytes(b"garbage")
    with pytest.raises(MRLError, match=str(bad)):
        CIFARDataModule(root=tmp_path, download=False, val_size=1).setup()


def test_bad_name():
    with pytest.raises(MRLError, match="name='cifar1000'"):
        CIFARDataModule("cifar1000")


def test_registry(tmp_path):
    assert set(DATAMODULES) == {"fashion_mnist", "cifar10", "cifar100", "imagenet", "imagefolder"}
    make_cifar(tmp_path, "cifar10", n_train=50, n_test=10)
    dm = build_datamodule("cifar10", root=tmp_path, download=False)
    assert dm.name == "cifar10"
    with pytest.raises(MRLError, match="'mnist'.*fashion_mnist"):
        build_datamodule("mnist")
