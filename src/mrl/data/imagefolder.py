"""Folders of images, one subfolder per class (torchvision ``ImageFolder`` layout); ImageNet.

Two layouts are recognised under ``root``:

* **split layout** (ImageNet's): ``root/<train_dir>/<class>/...`` plus ``root/<val_dir>/`` and/or
  a test folder (``test_dir``, or ``root/test`` when ``test_dir`` is None). Class indices come
  from the training folder (sorted names); the other folders may lack classes but not add any.

  - train + val + test folders: used as they are (``val_size`` is ignored);
  - train + val, no test folder (ImageNet): **the val folder is the test split**, and the
    validation split is carved out of the training folder (``val_size`` items, permutation
    seeded by ``seed``), so model selection never looks at the reported test numbers;
  - train + test, no val folder: validation carved out of train the same way.

* **flat layout**: ``root/<class>/...`` with no ``train_dir`` folder; split per class
  (stratified) into train / val / test with the fractions ``split`` and a permutation seeded
  by ``seed`` (``val_size`` is ignored).

Images are read with PIL and converted to RGB (``in_chans=3``) or grayscale (``in_chans=1``).
Transforms are ``timm.data.create_transform(**cfg, is_training=...)`` with the model's
config from :meth:`set_data_config`, or, before one is set, timm's defaults for
``input_size=(in_chans, img_size, img_size)``.

An image that cannot be read raises :class:`~mrl.core.errors.MRLError` naming its path; with
``skip_corrupt=True`` it is dropped from its batch instead and recorded (``num_skipped``,
``skipped_files``; counted once per file, across DataLoader workers). A batch whose every
image is unreadable comes out empty (``[0, C, H, W]``).
"""

from __future__ import annotations

import logging
import multiprocessing
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from torch.utils.data._utils.collate import default_collate
from torchvision.datasets.folder import IMG_EXTENSIONS, has_file_allowed_extension

from mrl.core.errors import MRLError
from mrl.core.validate import is_int
from mrl.data.base import MRLDataModule, channel_stats, fraction_ok, take_subset

__all__ = ["ImageFolderDataModule", "ImageNetDataModule"]

log = logging.getLogger(__name__)

_READ_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)


def to_mode(img: Image.Image, mode: str) -> Image.Image:
    """``img`` in ``mode`` ("RGB" or "L") with its full range kept: 16- and 32-bit integer
    greyscale (PNG ``I;16``, ``I``) is scaled by its bit depth to 8 bits (PIL's own ``convert``
    clips it, turning almost every pixel white); float images (``F``) in [0, 1] are scaled by
    255. Palette, RGBA (alpha dropped), CMYK, LA and 1-bit images use PIL's conversion."""
    if img.mode.startswith("I;16") or img.mode == "I":
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I;16") or arr.max(initial=0) <= 65535 else 2**32 - 1
        arr = np.clip(arr, 0, top) * (255.0 / top)
        img = Image.fromarray(np.round(arr).astype(np.uint8))
    elif img.mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        scale = 255.0 if arr.max(initial=0) <= 1.0 else 1.0
        img = Image.fromarray(np.clip(np.round(arr * scale), 0, 255).astype(np.uint8))
    return img.convert(mode)


def _list_images(
    directory: Path, class_to_idx: dict[str, int], root: Path, seen_files: set[str]
) -> list[tuple[str, int]]:
    """``(path, class index)`` of every image under ``directory/<class>/``, in torchvision's
    ``ImageFolder`` order (class, then folder path, then file name).

    Symbolic links: a linked folder is followed only when it leads outside ``root`` (data kept
    on another disk) and was not visited before, so a link back into the tree (a loop, or a
    link to another class or split) adds nothing; a file reached twice (two links to one
    image, in any split: ``seen_files`` holds the real paths already listed) is listed once."""
    root_real = os.path.realpath(root)
    seen_dirs: set[str] = set()
    out: list[tuple[str, int]] = []
    for cls in sorted(class_to_idx):
        top = directory / cls
        if not top.is_dir():
            continue
        found: list[tuple[str, str]] = []
        for here, dirs, files in os.walk(top, followlinks=True):
            real_here = os.path.realpath(here)
            if real_here in seen_dirs:
                dirs[:] = []
                continue
            seen_dirs.add(real_here)
            keep = []
            for d in sorted(dirs):
                full = os.path.join(here, d)
                if os.path.islink(full):
                    target = os.path.realpath(full)
                    inside = os.path.commonpath([target, root_real]) == root_real
                    ancestor = os.path.commonpath([target, real_here]) == target
                    if inside or ancestor or target in seen_dirs:
                        continue
                keep.append(d)
            dirs[:] = keep
            for name in sorted(files):
                path = os.path.join(here, name)
                if not has_file_allowed_extension(name, IMG_EXTENSIONS):
                    continue
                real = os.path.realpath(path)
                if real in seen_files or not os.path.isfile(real):
                    continue
                seen_files.add(real)
                found.append((here, name))
        out.extend((os.path.join(h, n), class_to_idx[cls]) for h, n in sorted(found))
    return out


AUTO_MAX_SIZE = 224


def infer_img_size(train_path: Path, classes: Sequence[str], per_class: int = 4) -> int:
    """``img_size: auto``: the larger side of the biggest of a few training images (the first
    ``per_class`` of each class, headers only), capped at 224, so a folder of 28-pixel digits
    trains at 28 px instead of being upscaled to 224."""
    sizes = []
    for cls in classes:
        names = sorted(
            e.name
            for e in os.scandir(train_path / cls)
            if e.is_file() and has_file_allowed_extension(e.name, IMG_EXTENSIONS)
        )[:per_class]
        for name in names:
            try:
                with Image.open(train_path / cls / name) as img:
                    sizes.append(max(img.size))
            except _READ_ERRORS:
                continue
    size = min(max(sizes), AUTO_MAX_SIZE) if sizes else AUTO_MAX_SIZE
    log.info(
        "data.img_size=auto: %d px (largest side of %d sampled training images, at most %d)",
        size,
        len(sizes),
        AUTO_MAX_SIZE,
    )
    return size


def _class_dirs(directory: Path) -> list[str]:
    return sorted(
        e.name for e in os.scandir(directory) if e.is_dir() and not e.name.startswith(".")
    )


class _SkipLog:
    """Which samples of one folder were unreadable; shared memory, so workers' marks count."""

    def __init__(self, samples: list[tuple[str, int]]) -> None:
        self.samples = samples
        self._flags = multiprocessing.RawArray("b", max(len(samples), 1))

    def mark(self, j: int) -> None:
        self._flags[j] = 1

    def indices(self) -> np.ndarray:
        flags = np.frombuffer(self._flags, dtype=np.int8)[: len(self.samples)]
        return np.flatnonzero(flags)


class _ImageDataset(Dataset):
    """``samples[indices]`` loaded with PIL in ``mode`` and transformed."""

    def __init__(
        self,
        samples: list[tuple[str, int]],
        indices: np.ndarray,
        mode: str,
        transform,
        skip_log: _SkipLog | None,
    ) -> None:
        self.samples = samples
        self.indices = np.asarray(indices, dtype=np.int64)
        self.mode = mode
        self.transform = transform
        self.skip_log = skip_log

    def __len__(self) -> int:
        return len(self.indices)

    @property
    def targets(self) -> torch.Tensor:
        return torch.tensor([self.samples[j][1] for j in self.indices], dtype=torch.long)

    def load(self, path: str) -> Image.Image:
        """Open ``path`` as a PIL image in ``mode``; unreadable files raise MRLError."""
        try:
            with open(path, "rb") as f:
                return to_mode(Image.open(f), self.mode)  # forces the full decode
        except _READ_ERRORS as e:
            raise MRLError(
                f"cannot read image {path} ({type(e).__name__}: {e}); fix or delete it, or set "
                "skip_corrupt=true"
            ) from e

    def __getitem__(self, i: int) -> tuple[Any, int] | None:
        j = int(self.indices[i])
        path, target = self.samples[j]
        try:
            img = self.load(path)
        except MRLError:
            if self.skip_log is None:
                raise
            self.skip_log.mark(j)
            return None
        return self.transform(img), target


class _SkipNoneCollate:
    """Default collate after dropping unreadable (None) items."""

    def __init__(self, shape: tuple[int, int, int]) -> None:
        self.shape = shape

    def __call__(self, batch: list[Any]) -> Any:
        batch = [b for b in batch if b is not None]
        if not batch:
            return torch.empty((0, *self.shape)), torch.empty(0, dtype=torch.long)
        return default_collate(batch)


def _check_split(split: Any) -> tuple[float, float, float]:
    if (
        isinstance(split, str)
        or not isinstance(split, Sequence)
        or len(split) != 3
        or not all(fraction_ok(s) and s >= 0 for s in split)
        or abs(sum(split) - 1.0) > 1e-6
        or split[0] <= 0
    ):
        raise MRLError(
            f"split={split!r} is invalid; use three fractions (train, val, test) >= 0 that sum "
            "to 1 with train > 0, e.g. [0.8, 0.1, 0.1]"
        )
    return float(split[0]), float(split[1]), float(split[2])


def stratified_split(
    targets: np.ndarray, fractions: tuple[float, float, float], seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-class seeded split of ``range(len(targets))`` into sorted (train, val, test)."""
    rng = np.random.default_rng([seed, 3])
    parts: list[list[np.ndarray]] = [[], [], []]
    for c in np.unique(targets):
        members = np.flatnonzero(targets == c)
        members = members[rng.permutation(len(members))]
        n = len(members)
        n_val = int(round(fractions[1] * n))
        n_test = int(round(fractions[2] * n))
        while n_val + n_test >= n and n_val + n_test > 0:  # keep one training image per class
            if n_val >= n_test:
                n_val -= 1
            else:
                n_test -= 1
        parts[1].append(members[:n_val])
        parts[2].append(members[n_val : n_val + n_test])
        parts[0].append(members[n_val + n_test :])
    out = [np.sort(np.concatenate(p)) if p else np.empty(0, np.int64) for p in parts]
    return out[0], out[1], out[2]


class ImageFolderDataModule(MRLDataModule):
    """Class-subfolder image datasets (split or flat layout, see the module doc).

    Args:
        root: the dataset folder.
        img_size: input size before a data config is set (the config's size wins); ``auto``:
            from the images (:func:`infer_img_size`).
        in_chans: 3 (RGB) or 1 (grayscale).
        train_dir, val_dir: subfolder names of the split layout.
        test_dir: test subfolder; None uses ``root/test`` when present, else the val folder.
        split: (train, val, test) fractions for the flat layout.
        skip_corrupt: drop unreadable images (counted) instead of raising.
        name: the dataset name reported in ``name``.
        **common: ``batch_size``, ``eval_batch_size``, ``num_workers``, ``val_size``, ``seed``,
            ``subset``, ``test_subset``, ``pin_memory``: see :class:`~mrl.data.base.MRLDataModule`.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        img_size: int | str = 224,
        in_chans: int = 3,
        train_dir: str = "train",
        val_dir: str | None = "val",
        test_dir: str | None = None,
        split: Sequence[float] = (0.8, 0.1, 0.1),
        skip_corrupt: bool = False,
        name: str = "imagefolder",
        **common: Any,
    ) -> None:
        super().__init__(**common)
        self.name = str(name)
        if self.train_classes is not None or self.imbalance_ratio is not None:
            raise MRLError(
                f"train_classes / imbalance_ratio are not supported by {self.name} (no label "
                "array in memory); use fashion_mnist, cifar10 or cifar100"
            )
        if root is None or str(root).strip() == "":
            raise MRLError(
                f"{self.name} root={root!r} is invalid; give the folder holding the class "
                "subfolders (or train/ and val/)"
            )
        self.root = Path(root).expanduser()
        if not self.root.exists():
            raise MRLError(
                f"{self.name} root={str(self.root)!r} does not exist; give an image folder"
            )
        if not self.root.is_dir():
            raise MRLError(
                f"{self.name} root={str(self.root)!r} is not a folder; give an image folder"
            )
        self._img_size_spec = img_size
        if img_size != "auto":
            if not is_int(img_size) or img_size < 1:
                raise MRLError(f"img_size={img_size!r} is invalid; use an integer >= 1 or auto")
            self.img_size = int(img_size)
        if not is_int(in_chans) or in_chans not in (1, 3):
            raise MRLError(f"in_chans={in_chans!r} is invalid; use 3 (RGB) or 1 (grayscale)")
        self.in_chans = int(in_chans)
        self.split = _check_split(split)
        self.skip_corrupt = bool(skip_corrupt)

        # ---- layout (cheap: directory names only; files are listed in setup)
        self.train_path: Path
        self.val_path: Path | None = None
        self.test_path: Path | None = None
        train_path = self.root / str(train_dir) if train_dir else None
        self.layout = "split" if train_path is not None and train_path.is_dir() else "flat"
        if self.layout == "split":
            assert train_path is not None
            self.train_path = train_path
            if val_dir and (self.root / val_dir).is_dir():
                self.val_path = self.root / val_dir
            if test_dir is not None:
                if not (self.root / test_dir).is_dir():
                    raise MRLError(
                        f"test_dir={test_dir!r}: {self.root / test_dir} is not a folder; give an "
                        "existing subfolder of root or None"
                    )
                self.test_path = self.root / test_dir
            elif (self.root / "test").is_dir() and self.root / "test" != self.train_path:
                self.test_path = self.root / "test"
            if self.val_path is None and self.test_path is None:
                raise MRLError(
                    f"{self.root} has {train_dir}/ but no {val_dir}/ or test/ folder; add one, "
                    f"or pass root={self.train_path} to split its class folders"
                )
        else:
            self.train_path = self.root
        self.classes = _class_dirs(self.train_path)
        if not self.classes:
            raise MRLError(
                f"{self.train_path} has no class subfolders; expected {self.train_path}/<class>/"
                f"<image> (or {self.root}/{train_dir}/<class>/<image> and "
                f"{self.root}/{val_dir}/<class>/<image>)"
            )
        if len(self.classes) < 2:
            raise MRLError(
                f"{self.train_path} has one class folder ({self.classes[0]!r}); classification "
                "needs at least 2 class subfolders"
            )
        self.class_to_idx = {c: i for i, c in enumerate(self.classes)}
        self.num_classes = len(self.classes)
        if img_size == "auto":
            self.img_size = infer_img_size(self.train_path, self.classes)
        self._sources: dict[str, tuple[list[tuple[str, int]], _SkipLog | None]] = {}
        self._indices: dict[str, tuple[str, np.ndarray]] = {}
        self._seen_files: set[str] = set()  # real paths listed so far, across splits

    # ------------------------------------------------------------------ files
    def _scan(self, directory: Path) -> list[tuple[str, int]]:
        on_disk = _class_dirs(directory)
        extra = sorted(set(on_disk) - set(self.class_to_idx))
        if extra:
            raise MRLError(
                f"{directory} has class folders {extra[:5]} that {self.train_path} lacks; every "
                "class must have training images"
            )
        samples = _list_images(directory, self.class_to_idx, Path(self.root), self._seen_files)
        if not samples:
            raise MRLError(
                f"{directory} has class folders but no images (extensions "
                f"{', '.join(IMG_EXTENSIONS)})"
            )
        counts = np.bincount([t for _, t in samples], minlength=self.num_classes)
        for cls in on_disk:
            if counts[self.class_to_idx[cls]] == 0:
                raise MRLError(
                    f"class folder {directory / cls} has no images (extensions "
                    f"{', '.join(IMG_EXTENSIONS)}); add images or remove the folder"
                )
        return samples

    def _source(self, key: str, directory: Path) -> None:
        samples = self._scan(directory)
        self._sources[key] = (samples, _SkipLog(samples) if self.skip_corrupt else None)

    def _load(self) -> None:
        self._seen_files = set()
        self._source("train", self.train_path)
        n_train = len(self._sources["train"][0])
        if self.layout == "flat":
            targets = np.array([t for _, t in self._sources["train"][0]], dtype=np.int64)
            tr, va, te = stratified_split(targets, self.split, self.seed)
            tr = take_subset(tr, self.subset, self.seed, 1)
            te = take_subset(te, self.test_subset, self.seed, 2)
            self._indices = {"train": ("train", tr), "val": ("train", va), "test": ("train", te)}
            return
        test_key = "test"
        if self.test_path is not None:
            self._source("test", self.test_path)
        if self.val_path is not None:
            self._source("val", self.val_path)
            if self.test_path is None:
                test_key = "val"  # ImageNet: the val folder is the test split
        n_test = len(self._sources[test_key][0])
        te = self._test_indices(n_test)
        if self.val_path is not None and self.test_path is not None:
            tr = take_subset(np.arange(n_train), self.subset, self.seed, 1)
            va = np.arange(len(self._sources["val"][0]))
            self._indices = {"train": ("train", tr), "val": ("val", va), "test": ("test", te)}
        else:
            tr, va = self._train_val_indices(n_train)
            self._indices = {"train": ("train", tr), "val": ("train", va), "test": (test_key, te)}

    # ------------------------------------------------------------------ transforms/datasets
    def _resolved_config(self) -> dict[str, Any]:
        if self.data_config is not None:
            return dict(self.data_config)
        from timm.data import resolve_data_config

        cfg = dict(resolve_data_config({"input_size": (3, self.img_size, self.img_size)}))
        cfg["input_size"] = (self.in_chans, self.img_size, self.img_size)
        cfg["mean"] = channel_stats(cfg["mean"], self.in_chans, "mean")
        cfg["std"] = channel_stats(cfg["std"], self.in_chans, "std")
        return cfg

    def transforms(self) -> tuple[Any, Any]:
        """(train, eval) transforms from the current data config."""
        from timm.data import create_transform

        cfg = self._resolved_config()
        return (
            create_transform(**cfg, is_training=True),
            create_transform(**cfg, is_training=False),
        )

    def _make_datasets(self) -> dict[str, Dataset | None]:
        train_tf, eval_tf = self.transforms()
        mode = "RGB" if self.in_chans == 3 else "L"

        def make(split: str, transform) -> _ImageDataset | None:
            key, idx = self._indices[split]
            if len(idx) == 0:
                return None
            samples, log = self._sources[key]
            return _ImageDataset(samples, idx, mode, transform, log)

        return {
            "train": make("train", train_tf),
            "val": make("val", eval_tf),
            "test": make("test", eval_tf),
            "train_eval": make("train", eval_tf),
        }

    def collate_fn(self, split: str):
        size = self._resolved_config()["input_size"]
        return _SkipNoneCollate((self.in_chans, int(size[-2]), int(size[-1])))

    # ------------------------------------------------------------------ corrupt files
    @property
    def skipped_files(self) -> list[str]:
        """Paths of the unreadable images met so far (with ``skip_corrupt=True``)."""
        out: list[str] = []
        for samples, log in self._sources.values():
            if log is not None:
                out.extend(samples[j][0] for j in log.indices())
        return sorted(out)

    @property
    def num_skipped(self) -> int:
        """Number of distinct unreadable images skipped so far."""
        return len(self.skipped_files)


class ImageNetDataModule(ImageFolderDataModule):
    """ImageNet-1k in the split layout: ``root/train/<wnid>/*.JPEG``, ``root/val/<wnid>/*.JPEG``.

    The val folder is the test split; validation is carved from train (``val_size``, seeded).
    ``num_classes`` is the number of class folders in ``root/train``.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        img_size: int = 224,
        in_chans: int = 3,
        train_dir: str = "train",
        val_dir: str | None = "val",
        test_dir: str | None = None,
        skip_corrupt: bool = False,
        **common: Any,
    ) -> None:
        if root is not None and str(root).strip():
            path = Path(root).expanduser()
            if path.is_dir() and not (path / train_dir).is_dir():
                raise MRLError(
                    f"imagenet root={str(path)!r} has no {train_dir}/ folder; expected "
                    f"{path}/{train_dir}/<wnid>/*.JPEG and {path}/{val_dir}/<wnid>/*.JPEG"
                )
        super().__init__(
            root,
            img_size=img_size,
            in_chans=in_chans,
            train_dir=train_dir,
            val_dir=val_dir,
            test_dir=test_dir,
            skip_corrupt=skip_corrupt,
            name="imagenet",
            **common,
        )
