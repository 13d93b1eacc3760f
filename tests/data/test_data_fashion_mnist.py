"""FashionMNISTDataModule on a tiny IDX fixture, and on the real files when installed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from mrl.core.errors import MRLError
from mrl.data import FashionMNISTDataModule
from mrl.data.fashion_mnist import MEAN, STD, find_idx_files
from mrl.data.tensor_data import random_crop_flip
from mrl_data_helpers import encoded_images

REAL = Path("/usr/share/datasets/fashion-mnist")


def centre_ids(x: torch.Tensor) -> list[int]:
    """Recover the encoded index from the centre pixel of normalised eval images."""
    pix = x[:, 0, 14, 14] * STD[0] + MEAN[0]
    return [int(round(v)) for v in (pix * 255).tolist()]


def all_items(loader) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = zip(*loader, strict=True)
    return torch.cat(xs), torch.cat(ys)


def test_attributes_before_setup(idx_dir):
    dm = FashionMNISTDataModule(root=idx_dir, val_size=10)
    assert (dm.name, dm.num_classes, dm.in_chans, dm.img_size) == ("fashion_mnist", 10, 1, 28)
    assert len(dm.classes) == 10 and dm.classes[9] == "Ankle boot"


def test_shapes_labels_and_split_sizes(idx_dir):
    dm = FashionMNISTDataModule(root=idx_dir, val_size=10, batch_size=16)
    dm.setup("fit")
    assert dm.split_sizes() == {"train": 40, "val": 10, "test": 20}
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (16, 1, 28, 28) and x.dtype == torch.float32
    assert y.dtype == torch.long and y.shape == (16,)
    assert len(dm.train_dataloader()) == 3  # 40 / 16, drop_last=False
    # eval splits: exact data, labels = index % 10, train/val disjoint and covering train
    xv, yv = all_items(dm.val_dataloader())
    xt, yt = all_items(dm.train_eval_dataloader())
    ids_v, ids_t = centre_ids(xv), centre_ids(xt)
    assert ids_t == sorted(ids_t)  # no shuffling
    assert sorted(ids_v + ids_t) == list(range(50))
    assert yv.tolist() == [i % 10 for i in ids_v] and yt.tolist() == [i % 10 for i in ids_t]
    xs, ys = all_items(dm.test_dataloader())
    assert centre_ids(xs) == list(range(100, 120)) and ys.tolist() == [i % 10 for i in range(20)]
    ref = (torch.from_numpy(encoded_images(20, offset=100)).float() / 255 - MEAN[0]) / STD[0]
    torch.testing.assert_close(xs[:, 0], ref)


def test_val_split_deterministic_for_seed(idx_dir):
    def val_ids(seed, **kw):
        dm = FashionMNISTDataModule(root=idx_dir, val_size=10, seed=seed, **kw)
        return centre_ids(all_items(dm.val_dataloader())[0])

    assert val_ids(0) == val_ids(0)
    assert val_ids(0) != val_ids(1)
    assert val_ids(0, subset=5) == val_ids(0)  # subset does not move the val split


def test_val_fraction_subset_and_test_subset(idx_dir):
    dm = FashionMNISTDataModule(root=idx_dir, val_size=0.2, subset=7, test_subset=5)
    assert dm.split_sizes() == {"train": 7, "val": 10, "test": 5}
    dm = FashionMNISTDataModule(root=idx_dir, val_size=0, subset=1000)
    assert dm.split_sizes() == {"train": 50, "val": 0, "test": 20}
    assert dm.val_dataloader() == []


def test_augmentation_is_crop_and_flip(idx_dir):
    torch.manual_seed(0)
    x = torch.from_numpy(encoded_images(64)).unsqueeze(1)
    out = random_crop_flip(x, pad=2, flip=True)
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    flips = 0
    for i in range(len(x)):
        cands = [
            (padded[i, :, dy : dy + 28, dx : dx + 28], f)
            for dy in range(5)
            for dx in range(5)
            for f in (False, True)
        ]
        match = [f for c, f in cands if torch.equal(out[i], c.flip(-1) if f else c)]
        assert match, f"item {i} is not a crop/flip of its input"
        flips += match[0]
    assert 10 < flips < 54  # both branches taken


def test_train_batches_augmented_and_resized(idx_dir):
    dm = FashionMNISTDataModule(root=idx_dir, val_size=10, batch_size=40)
    dm.setup()
    torch.manual_seed(0)
    x_aug, _ = next(iter(dm.train_dataloader()))
    x_eval, _ = next(iter(dm.train_eval_dataloader()))
    assert x_aug.shape == x_eval.shape
    assert not torch.equal(x_aug.sort(0).values, x_eval.sort(0).values)
    dm = FashionMNISTDataModule(root=idx_dir, val_size=10, batch_size=8, img_size=56)
    assert next(iter(dm.train_dataloader()))[0].shape == (8, 1, 56, 56)
    assert next(iter(dm.test_dataloader()))[0].shape == (8, 1, 56, 56)


def test_set_data_config_keeps_small_pipeline(idx_dir):
    dm = FashionMNISTDataModule(root=idx_dir, val_size=10, batch_size=4)
    dm.set_data_config({"input_size": (3, 224, 224), "mean": (0.5, 0.5, 0.5), "std": (0.2,) * 3})
    assert dm.data_config["input_size"] == (1, 224, 224)
    assert dm.img_size == 28 and dm.in_chans == 1
    assert next(iter(dm.train_dataloader()))[0].shape == (4, 1, 28, 28)


def test_workers(idx_dir):
    dm = FashionMNISTDataModule(root=idx_dir, val_size=10, batch_size=8, num_workers=2)
    loader = dm.train_dataloader()
    assert loader.persistent_workers
    x, y = all_items(loader)
    assert x.shape == (40, 1, 28, 28) and len(y) == 40


def test_lightning_fit(idx_dir):
    import pytorch_lightning as pl

    class Tiny(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 10))

        def training_step(self, batch, _):
            x, y = batch
            return torch.nn.functional.cross_entropy(self.net(x), y)

        def validation_step(self, batch, _):
            x, y = batch
            self.log("val_loss", torch.nn.functional.cross_entropy(self.net(x), y))

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    dm = FashionMNISTDataModule(root=idx_dir, val_size=10, batch_size=16)
    trainer = pl.Trainer(
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
    )
    trainer.fit(Tiny(), datamodule=dm)
    assert trainer.global_step == 3


@pytest.mark.parametrize(
    "kwargs, bad",
    [
        ({"batch_size": 0}, "batch_size=0"),
        ({"eval_batch_size": -1}, "eval_batch_size=-1"),
        ({"num_workers": -1}, "num_workers=-1"),
        ({"val_size": -1}, "val_size=-1"),
        ({"val_size": 1.5}, "val_size=1.5"),
        ({"val_size": True}, "val_size=True"),
        ({"subset": 0}, "subset=0"),
        ({"test_subset": 0}, "test_subset=0"),
        ({"seed": "x"}, "seed='x'"),
        ({"img_size": 0}, "img_size=0"),
        ({"batch_size": 2.5}, "batch_size=2.5"),
    ],
)
def test_bad_arguments(idx_dir, kwargs, bad):
    with pytest.raises(MRLError) as err:
        FashionMNISTDataModule(root=idx_dir, **kwargs)
    assert bad in str(err.value) and "\n" not in str(err.value)


def test_val_size_too_large(idx_dir):
    dm = FashionMNISTDataModule(root=idx_dir, val_size=50)
    with pytest.raises(
        MRLError, match=r"val_size=50 leaves no training images: fashion_mnist has 50"
    ):
        dm.setup()


def test_missing_files_without_download(tmp_path):
    dm = FashionMNISTDataModule(root=tmp_path / "empty", download=False)
    with pytest.raises(MRLError, match="empty") as err:
        dm.setup()
    assert "train-images-idx3-ubyte.gz" in str(err.value)


def test_torchvision_layout_found(idx_dir, tmp_path):
    raw = tmp_path / "tv" / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for f in idx_dir.iterdir():
        (raw / f.name).write_bytes(f.read_bytes())
    assert find_idx_files(tmp_path / "tv") is not None
    dm = FashionMNISTDataModule(root=tmp_path / "tv", val_size=5, download=False)
    assert dm.split_sizes() == {"train": 45, "val": 5, "test": 20}


def test_truncated_dataset_file(idx_dir):
    p = idx_dir / "t10k-images-idx3-ubyte"
    p.write_bytes(p.read_bytes()[:1000])
    with pytest.raises(MRLError, match=str(p)):
        FashionMNISTDataModule(root=idx_dir, val_size=10).setup()


@pytest.mark.skipif(find_idx_files(REAL) is None, reason="dataset-fashion-mnist not installed")
def test_real_fashion_mnist():
    dm = FashionMNISTDataModule(val_size=5000, batch_size=256)
    dm.setup()
    train_x, train_y, test_x, test_y = dm._data
    assert train_x.shape == (60000, 1, 28, 28) and test_x.shape == (10000, 1, 28, 28)
    assert np.bincount(train_y.numpy()).tolist() == [6000] * 10
    assert np.bincount(test_y.numpy()).tolist() == [1000] * 10
    assert dm.split_sizes() == {"train": 55000, "val": 5000, "test": 10000}
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (256, 1, 28, 28) and y.shape == (256,)
    x, _ = next(iter(dm.test_dataloader()))
    assert abs(x.mean().item()) < 0.2 and abs(x.std().item() - 1) < 0.2


@pytest.mark.skipif(find_idx_files(REAL) is None, reason="needs Debian's dataset-fashion-mnist")
def test_base_classes_never_reach_training_and_novel_ones_stay_for_few_shot():
    """Novel-class split on the real data: no novel-class image in a training batch or in
    validation; every class (novel ones included) in train_eval (few-shot support) and test."""
    dm = FashionMNISTDataModule(
        root=REAL, val_size=1000, batch_size=4096, train_classes=[0, 1, 2, 3, 4], augment=False
    )
    dm.setup("fit")
    train_labels = torch.cat([y for _, y in dm.train_dataloader()])
    assert set(train_labels.tolist()) == {0, 1, 2, 3, 4}
    # the official split has 6,000 per class: the five base classes, less their val share
    assert 29_000 < len(train_labels) < 30_000
    assert set(all_items(dm.val_dataloader())[1].tolist()) <= {0, 1, 2, 3, 4}
    assert set(dm.dataset("train_eval").targets.tolist()) == set(range(10))
    assert len(dm.dataset("train_eval")) == 59_000 and len(dm.dataset("test")) == 10_000
    with pytest.raises(MRLError, match="train_classes has 12"):
        FashionMNISTDataModule(root=REAL, train_classes=[0, 12]).setup("fit")
    with pytest.raises(MRLError, match="lists a class twice"):
        FashionMNISTDataModule(root=REAL, train_classes=[1, 1])


@pytest.mark.skipif(find_idx_files(REAL) is None, reason="needs Debian's dataset-fashion-mnist")
def test_long_tail_profile_is_seeded_and_exponential():
    def counts(seed):
        dm = FashionMNISTDataModule(root=REAL, val_size=1000, imbalance_ratio=100, seed=seed)
        dm.setup("fit")
        return dm, np.bincount(dm.dataset("train").targets.numpy(), minlength=10)

    dm, c0 = counts(0)
    _, again = counts(0)
    _, c1 = counts(1)
    np.testing.assert_array_equal(c0, again)  # same seed, same set
    assert not np.array_equal(c0, c1)  # another seed ranks the classes differently
    ranked = np.sort(c0)[::-1]
    n_max = ranked[0]
    expected = [round(n_max * 100 ** (-i / 9)) for i in range(10)]
    np.testing.assert_array_equal(ranked, expected)  # n_max * r^(-i/(C-1))
    assert ranked[0] / ranked[-1] == pytest.approx(100, rel=0.02)
    groups = dm.class_groups()
    assert sorted(groups["head"] + groups["medium"] + groups["tail"]) == list(range(10))
    assert min(c0[groups["head"]]) > max(c0[groups["tail"]])
    with pytest.raises(MRLError, match="imbalance_ratio=0.5 is invalid"):
        FashionMNISTDataModule(root=REAL, imbalance_ratio=0.5)
