"""ImageFolderDataModule / ImageNetDataModule on tiny folders written with PIL."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mrl.core.errors import MRLError
from mrl.data import ImageFolderDataModule, ImageNetDataModule
from mrl_data_helpers import CLASSES, save_images


def n_items(loader) -> int:
    return sum(len(y) for _, y in loader)


def test_split_layout_val_folder_is_test(split_folder):
    dm = ImageFolderDataModule(split_folder, img_size=32, val_size=3, batch_size=5)
    assert (dm.name, dm.num_classes, dm.in_chans, dm.img_size) == ("imagefolder", 3, 3, 32)
    assert dm.layout == "split" and dm.classes == list(CLASSES)
    assert dm.split_sizes() == {"train": 15, "val": 3, "test": 6}
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (5, 3, 32, 32) and y.dtype == torch.long
    xt, yt = next(iter(dm.test_dataloader()))
    assert xt.shape == (5, 3, 32, 32)
    assert dm.dataset("test").targets.tolist() == [0, 0, 1, 1, 2, 2]
    assert n_items(dm.train_eval_dataloader()) == 15
    # val carved from train: disjoint, deterministic for the seed
    val = set(dm.dataset("val").indices.tolist())
    assert not val & set(dm.dataset("train").indices.tolist())
    again = ImageFolderDataModule(split_folder, img_size=32, val_size=3)
    assert set(again.dataset("val").indices.tolist()) == val


def test_split_layout_with_test_folder(split_folder):
    for i, c in enumerate(CLASSES[:2]):  # a test folder may lack classes
        save_images(split_folder / "test" / c, 3, seed=20 + i)
    dm = ImageFolderDataModule(split_folder, img_size=32, val_size=3)
    assert dm.split_sizes() == {"train": 18, "val": 6, "test": 6}
    assert dm.dataset("test").targets.tolist() == [0, 0, 0, 1, 1, 1]


def test_flat_layout_stratified(flat_folder):
    dm = ImageFolderDataModule(flat_folder, img_size=24, batch_size=4)
    assert dm.layout == "flat" and dm.num_classes == 3
    assert dm.split_sizes() == {"train": 12, "val": 3, "test": 3}
    for split, per_class in (("train", 4), ("val", 1), ("test", 1)):
        assert Counter(dm.dataset(split).targets.tolist()) == {
            0: per_class,
            1: per_class,
            2: per_class,
        }
    parts = [set(dm.dataset(s).indices.tolist()) for s in ("train", "val", "test")]
    assert set.union(*parts) == set(range(18)) and sum(map(len, parts)) == 18
    again = ImageFolderDataModule(flat_folder, img_size=24, seed=0)
    assert again.dataset("val").indices.tolist() == dm.dataset("val").indices.tolist()
    x, _ = next(iter(dm.val_dataloader()))
    assert x.shape == (3, 3, 24, 24)
    dm = ImageFolderDataModule(flat_folder, split=(1.0, 0.0, 0.0), subset=5)
    assert dm.split_sizes() == {"train": 5, "val": 0, "test": 0}
    assert dm.val_dataloader() == []


def test_grayscale(flat_folder):
    dm = ImageFolderDataModule(flat_folder, img_size=16, in_chans=1, batch_size=6)
    x, _ = next(iter(dm.train_dataloader()))
    assert x.shape == (6, 1, 16, 16)
    x, _ = next(iter(dm.test_dataloader()))
    assert x.shape == (3, 1, 16, 16)


def test_timm_data_config_gives_224_batches(split_folder):
    timm = pytest.importorskip("timm")
    model = timm.create_model("resnet18", pretrained=False, num_classes=0)
    cfg = timm.data.resolve_data_config(model=model)
    dm = ImageFolderDataModule(split_folder, img_size=32, val_size=3, batch_size=4)
    dm.setup()  # config may come after setup
    dm.set_data_config(cfg)
    assert dm.img_size == 224
    x, _ = next(iter(dm.train_dataloader()))
    assert x.shape == (4, 3, 224, 224)
    x, _ = next(iter(dm.test_dataloader()))
    assert x.shape == (4, 3, 224, 224)
    with torch.no_grad():
        assert model(x).shape == (4, 512)
    gray = ImageFolderDataModule(split_folder, in_chans=1, val_size=3, batch_size=2)
    gray.set_data_config(cfg)
    assert gray.data_config["mean"] == pytest.approx((sum(cfg["mean"]) / 3,))
    assert next(iter(gray.train_dataloader()))[0].shape == (2, 1, 224, 224)


def test_corrupt_image_names_path(flat_folder):
    bad = flat_folder / "dog" / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg")
    dm = ImageFolderDataModule(flat_folder, img_size=16, split=(1.0, 0.0, 0.0), batch_size=32)
    with pytest.raises(MRLError) as err:
        next(iter(dm.train_eval_dataloader()))
    assert str(bad) in str(err.value) and "skip_corrupt" in str(err.value)


@pytest.mark.parametrize("num_workers", [0, 2])
def test_skip_corrupt_counts(flat_folder, num_workers):
    bad = flat_folder / "dog" / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    dm = ImageFolderDataModule(
        flat_folder,
        img_size=16,
        split=(1.0, 0.0, 0.0),
        batch_size=4,
        skip_corrupt=True,
        num_workers=num_workers,
    )
    assert dm.num_skipped == 0
    assert len(dm.dataset("train")) == 19
    assert n_items(dm.train_eval_dataloader()) == 18
    assert n_items(dm.train_dataloader()) == 18  # counted once per file
    assert dm.num_skipped == 1 and dm.skipped_files == [str(bad)]


def test_all_corrupt_batch_is_empty(tmp_path):
    save_images(tmp_path / "a", 2)
    (tmp_path / "a" / "zz.jpg").write_bytes(b"junk")
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "zz.jpg").write_bytes(b"junk")
    dm = ImageFolderDataModule(
        tmp_path, img_size=8, split=(1.0, 0.0, 0.0), batch_size=1, skip_corrupt=True
    )
    shapes = [tuple(x.shape) for x, _ in dm.train_eval_dataloader()]
    assert shapes == [(1, 3, 8, 8), (1, 3, 8, 8), (0, 3, 8, 8), (0, 3, 8, 8)]


def test_imagenet(split_folder):
    dm = ImageNetDataModule(split_folder, img_size=32, val_size=3, batch_size=4)
    assert dm.name == "imagenet" and dm.num_classes == 3
    assert dm.split_sizes() == {"train": 15, "val": 3, "test": 6}
    assert next(iter(dm.train_dataloader()))[0].shape == (4, 3, 32, 32)


def test_imagenet_needs_train_folder(flat_folder):
    with pytest.raises(MRLError, match="no train/ folder"):
        ImageNetDataModule(flat_folder)


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda r: r / "missing", "does not exist"),
        (lambda r: (r / "f.txt").write_text("x") and r / "f.txt", "is not a folder"),
        (lambda r: r, "has no class subfolders"),
    ],
)
def test_bad_roots(tmp_path, make, match):
    root = make(tmp_path)
    with pytest.raises(MRLError, match=match) as err:
        ImageFolderDataModule(root)
    assert str(root) in str(err.value)


def test_empty_class_folder(flat_folder):
    (flat_folder / "empty").mkdir()
    dm = ImageFolderDataModule(flat_folder)
    with pytest.raises(MRLError, match="has no images") as err:
        dm.setup()
    assert str(flat_folder / "empty") in str(err.value)


def test_no_images_at_all(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "notes.txt").write_text("no images")
    with pytest.raises(MRLError, match="no images"):
        ImageFolderDataModule(tmp_path).setup()


def test_extra_class_in_val(split_folder):
    save_images(split_folder / "val" / "zebra", 1)
    with pytest.raises(MRLError, match="zebra"):
        ImageFolderDataModule(split_folder, val_size=3).setup()


def test_train_folder_only(tmp_path):
    save_images(tmp_path / "train" / "a", 2)
    with pytest.raises(MRLError, match="no val/ or test/"):
        ImageFolderDataModule(tmp_path)


@pytest.mark.parametrize(
    "kwargs, bad",
    [
        ({"in_chans": 2}, "in_chans=2"),
        ({"split": (0.5, 0.5)}, "split=(0.5, 0.5)"),
        ({"split": (0.0, 0.5, 0.5)}, "split=(0.0, 0.5, 0.5)"),
        ({"split": (0.8, 0.1, 0.2)}, "split=(0.8, 0.1, 0.2)"),
        ({"test_dir": "nope"}, "test_dir='nope'"),
        ({"img_size": -3}, "img_size=-3"),
    ],
)
def test_bad_arguments(split_folder, kwargs, bad):
    with pytest.raises(MRLError) as err:
        ImageFolderDataModule(split_folder, **kwargs)
    assert bad in str(err.value) and "\n" not in str(err.value)


def test_val_size_too_large(split_folder):
    with pytest.raises(MRLError, match="val_size=5000"):
        ImageFolderDataModule(split_folder).setup()


def test_bad_data_config(split_folder):
    dm = ImageFolderDataModule(split_folder, val_size=3)
    with pytest.raises(MRLError, match="input_size"):
        dm.set_data_config({"mean": (0.5,)})
    with pytest.raises(MRLError, match="input_size"):
        dm.set_data_config({"input_size": (3, 0, 224)})


# ----------------------------------------------------------------------------- links and modes
def test_symlink_loops_and_links_into_the_tree_add_nothing(flat_folder, tmp_path):
    plain = ImageFolderDataModule(flat_folder, img_size=20, split=[0.5, 0.25, 0.25])
    plain.setup()
    before = {k: plain._indices[k][1].tolist() for k in ("train", "val", "test")}
    n_files = sum(len(s) for s, _ in plain._sources.values())
    (flat_folder / "cat" / "loop").symlink_to(flat_folder, target_is_directory=True)
    (flat_folder / "dog" / "to_cat").symlink_to(flat_folder / "cat", target_is_directory=True)
    (flat_folder / "eel" / "same.png").symlink_to(flat_folder / "eel" / "img0.png")
    outside = tmp_path / "elsewhere"  # a folder kept outside the tree is followed
    save_images(outside, 2, seed=9)
    (flat_folder / "eel" / "more").symlink_to(outside, target_is_directory=True)
    dm = ImageFolderDataModule(flat_folder, img_size=20, split=[0.5, 0.25, 0.25])
    dm.setup()
    samples = dm._sources["train"][0]
    assert len(samples) == n_files + 2  # only the two images outside the tree were added
    reals = [str(Path(p).resolve()) for p, _ in samples]
    assert len(set(reals)) == len(reals)
    by_class = Counter(t for _, t in samples)
    assert by_class == {0: 6, 1: 6, 2: 8}
    assert before["test"]  # the same folder without links still splits as it did


def _mode_images(folder: Path) -> dict[str, tuple[Image.Image, float]]:
    """name -> (image, expected mean of its 8-bit greyscale)."""
    ramp16 = np.linspace(0, 65535, 20 * 24).reshape(20, 24).astype(np.uint16)
    grey = np.linspace(0, 255, 20 * 24).reshape(20, 24).astype(np.uint8)
    rgb = np.stack([grey] * 3, axis=-1)
    return {
        "grey8": (Image.fromarray(grey), grey.mean()),
        "grey16": (Image.fromarray(ramp16), (ramp16 / 257.0).mean()),
        "rgb": (Image.fromarray(rgb), grey.mean()),
        "rgba": (Image.fromarray(np.dstack([rgb, grey])), grey.mean()),
        "palette": (Image.fromarray(rgb).convert("P"), None),
        "cmyk": (Image.fromarray(rgb).convert("CMYK"), None),
    }


@pytest.mark.parametrize("in_chans", [1, 3])
def test_8_and_16_bit_palette_rgba_grey_and_cmyk_images_keep_their_range(tmp_path, in_chans):
    from mrl.data.imagefolder import to_mode

    for name, (img, mean) in _mode_images(tmp_path).items():
        ext = "tiff" if name == "cmyk" else "png"
        path = tmp_path / f"{name}.{ext}"
        img.save(path)
        with Image.open(path) as reopened:
            assert reopened.mode == img.mode or name == "grey16", (name, reopened.mode)
            out = to_mode(reopened, "L" if in_chans == 1 else "RGB")
        arr = np.asarray(out, dtype=np.float64)
        assert arr.std() > 50, name  # a ramp, not a saturated (all-white) image
        if mean is not None:
            assert abs(arr.mean() - mean) < 1.0, (name, arr.mean(), mean)


def test_img_size_auto_follows_the_images(flat_folder, tmp_path):
    dm = ImageFolderDataModule(flat_folder, img_size="auto")
    assert dm.img_size == 24  # save_images writes 20 x 24 images
    big = tmp_path / "big"
    for c in CLASSES[:2]:
        (big / c).mkdir(parents=True)
        Image.fromarray(np.zeros((300, 400, 3), np.uint8)).save(big / c / "a.png")
    assert ImageFolderDataModule(big, img_size="auto").img_size == 224  # capped
    with pytest.raises(MRLError, match="img_size='big' is invalid; use an integer >= 1 or auto"):
        ImageFolderDataModule(flat_folder, img_size="big")
