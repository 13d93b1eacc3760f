"""CIFAR-10 / CIFAR-100 (Krizhevsky, 2009): 50k train / 10k test RGB 32x32 images.

Files: the python pickles (``cifar-10-batches-py/`` or ``cifar-100-python/``) under ``root``,
fetched with torchvision's ``CIFAR10/CIFAR100(download=True)`` when missing (online only; a
missing folder that cannot be downloaded is an :class:`~mrl.core.errors.MRLError` naming ``root``).
The pickles are read directly into memory (no checksum pass over 170 MB at every start).

Two pipelines:

* no data config (default): batches built on tensors like Fashion-MNIST (random crop with
  4-pixel zero padding + horizontal flip; CIFAR mean/std; resized on tensors when ``img_size``
  is not 32);
* after :meth:`~mrl.data.base.MRLDataModule.set_data_config` (timm's config of a model):
  images are upsampled to the model's input size with
  ``timm.data.create_transform(**cfg, is_training=...)`` per image (model mean/std,
  interpolation, crop_pct), as for ImageNet.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from mrl.core.errors import MRLError
from mrl.data.base import MRLDataModule, check_int
from mrl.data.tensor_data import TensorImageDataset, collate_tensor_batch

__all__ = ["CIFARDataModule", "CIFAR10DataModule", "CIFAR100DataModule"]

DEFAULT_ROOT = "~/.cache/mrl/cifar"

_SPECS: dict[str, dict[str, Any]] = {
    "cifar10": {
        "folder": "cifar-10-batches-py",
        "train": [f"data_batch_{i}" for i in range(1, 6)],
        "test": ["test_batch"],
        "meta": ("batches.meta", "label_names"),
        "label_key": "labels",
        "num_classes": 10,
        "mean": (0.4914, 0.4822, 0.4465),
        "std": (0.2470, 0.2435, 0.2616),
    },
    "cifar100": {
        "folder": "cifar-100-python",
        "train": ["train"],
        "test": ["test"],
        "meta": ("meta", "fine_label_names"),
        "label_key": "fine_labels",
        "num_classes": 100,
        "mean": (0.5071, 0.4865, 0.4409),
        "std": (0.2673, 0.2564, 0.2762),
    },
}


def _unpickle(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as f:
            return pickle.load(f, encoding="latin1")
    except Exception as e:
        raise MRLError(
            f"cannot read CIFAR file {path} ({type(e).__name__}: {e}); delete the folder to "
            "download it again"
        ) from e


def _read_split(folder: Path, files: list[str], label_key: str) -> tuple[np.ndarray, np.ndarray]:
    data, labels = [], []
    for name in files:
        entry = _unpickle(folder / name)
        try:
            x = np.asarray(entry["data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
            y = np.asarray(entry[label_key], dtype=np.int64)
        except (KeyError, ValueError, TypeError) as e:
            raise MRLError(
                f"CIFAR file {folder / name} is malformed ({type(e).__name__}: {e}); expected "
                f"'data' (N x 3072 uint8) and '{label_key}'"
            ) from e
        if len(x) != len(y):
            raise MRLError(f"CIFAR file {folder / name} has {len(x)} images but {len(y)} labels")
        data.append(x)
        labels.append(y)
    return np.concatenate(data), np.concatenate(labels)


class _ArrayImageDataset(Dataset):
    """Per-image PIL transform over uint8 ``[N, C, H, W]`` tensors (the timm-config path)."""

    def __init__(
        self, images: torch.Tensor, labels: torch.Tensor, indices: np.ndarray, transform
    ) -> None:
        self.images = images
        self.labels = labels
        self.indices = torch.from_numpy(np.asarray(indices, dtype=np.int64))
        self.transform = transform

    def __len__(self) -> int:
        return len(self.indices)

    @property
    def targets(self) -> torch.Tensor:
        return self.labels[self.indices]

    def __getitem__(self, i: int) -> tuple[Any, int]:
        j = int(self.indices[i])
        img = Image.fromarray(np.ascontiguousarray(self.images[j].permute(1, 2, 0).numpy()))
        return self.transform(img), int(self.labels[j])


class CIFARDataModule(MRLDataModule):
    """CIFAR-10 or CIFAR-100 via torchvision's download, held in memory.

    Args:
        name: ``"cifar10"`` or ``"cifar100"``.
        root: folder holding (or receiving) ``cifar-10-batches-py`` / ``cifar-100-python``.
        download: download with torchvision when the files are missing.
        img_size: output size of the tensor pipeline (32 native); a data config overrides it.
        augment: random crop (padding 4) + flip on the training split (tensor pipeline).
        **common: ``batch_size``, ``eval_batch_size``, ``num_workers``, ``val_size``, ``seed``,
            ``subset``, ``test_subset``, ``pin_memory``, ``train_classes``,
            ``imbalance_ratio``: see :class:`~mrl.data.base.MRLDataModule`.
    """

    def __init__(
        self,
        name: str = "cifar10",
        root: str | os.PathLike = DEFAULT_ROOT,
        download: bool = True,
        img_size: int = 32,
        augment: bool = True,
        **common: Any,
    ) -> None:
        super().__init__(**common)
        key = str(name).lower().replace("-", "").replace("_", "")
        if key not in _SPECS:
            raise MRLError(f"CIFAR name={name!r} is invalid; use one of {', '.join(_SPECS)}")
        if root is None or str(root).strip() == "":
            raise MRLError(f"CIFAR root={root!r} is invalid; give a folder, e.g. {DEFAULT_ROOT}")
        self.name = key
        self._spec = _SPECS[key]
        self.root = Path(root).expanduser()
        self.download = bool(download)
        self.augment = bool(augment)
        self.img_size = check_int("img_size", img_size, 1)
        self.num_classes = int(self._spec["num_classes"])
        self.in_chans = 3
        self.mean = self._spec["mean"]
        self.std = self._spec["std"]
        self.classes: list[str] | None = None  # known after setup
        self._data: tuple[torch.Tensor, ...] | None = None

    # ------------------------------------------------------------------ files
    @property
    def folder(self) -> Path:
        return self.root / self._spec["folder"]

    def _missing(self) -> list[str]:
        names = [*self._spec["train"], *self._spec["test"], self._spec["meta"][0]]
        return [n for n in names if not (self.folder / n).is_file()]

    def prepare_data(self) -> None:
        missing = self._missing()
        if not missing:
            return
        if not self.download:
            raise MRLError(
                f"{self.name} files are missing under root={str(self.root)!r} (no "
                f"{self.folder / missing[0]}); set download=true or put "
                f"{self._spec['folder']}/ there"
            )
        from torchvision.datasets import CIFAR10, CIFAR100

        cls = CIFAR10 if self.name == "cifar10" else CIFAR100
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            cls(str(self.root), train=True, download=True)
        except Exception as e:  # network errors come in many types
            msg = str(e).strip().splitlines()[0] if str(e).strip() else repr(e)
            raise MRLError(
                f"{self.name} files are missing under root={str(self.root)!r} and the download "
                f"failed ({type(e).__name__}: {msg}); put {self._spec['folder']}/ there or "
                "run once with internet access"
            ) from e

    def _load(self) -> None:
        self.prepare_data()
        spec = self._spec
        train_x, train_y = _read_split(self.folder, spec["train"], spec["label_key"])
        test_x, test_y = _read_split(self.folder, spec["test"], spec["label_key"])
        meta_file, meta_key = spec["meta"]
        meta = _unpickle(self.folder / meta_file)
        self.classes = list(meta.get(meta_key, [])) or None
        for path, y in ((spec["train"][0], train_y), (spec["test"][0], test_y)):
            if len(y) and (y.min() < 0 or y.max() >= self.num_classes):
                raise MRLError(
                    f"CIFAR file {self.folder / path} has labels in [{y.min()}, {y.max()}]; "
                    f"expected 0..{self.num_classes - 1}"
                )
        self._data = (
            torch.from_numpy(train_x),
            torch.from_numpy(train_y),
            torch.from_numpy(test_x),
            torch.from_numpy(test_y),
        )

    # ------------------------------------------------------------------ datasets
    def _make_datasets(self) -> dict[str, Dataset | None]:
        assert self._data is not None
        train_x, train_y, test_x, test_y = self._data
        train_idx, val_idx = self._train_val_indices(len(train_x))
        labels = train_y.numpy() if hasattr(train_y, "numpy") else np.asarray(train_y)
        train_idx, val_idx, train_eval_idx = self._class_split(train_idx, val_idx, labels)
        test_idx = self._test_indices(len(test_x))

        if self.data_config is not None:
            from timm.data import create_transform

            train_tf = create_transform(**self.data_config, is_training=True)
            eval_tf = create_transform(**self.data_config, is_training=False)

            def make(x, y, idx, train):
                return _ArrayImageDataset(x, y, idx, train_tf if train else eval_tf)

        else:

            def make(x, y, idx, train):
                return TensorImageDataset(
                    x,
                    y,
                    torch.from_numpy(idx),
                    train=train and self.augment,
                    pad=4,
                    flip=True,
                    img_size=self.img_size,
                    mean=self.mean,
                    std=self.std,
                )

        return {
            "train": make(train_x, train_y, train_idx, True),
            "val": make(train_x, train_y, val_idx, False) if len(val_idx) else None,
            "test": make(test_x, test_y, test_idx, False),
            "train_eval": make(train_x, train_y, train_eval_idx, False),
        }

    def collate_fn(self, split: str):
        return collate_tensor_batch  # default-collates per-item samples too


class CIFAR10DataModule(CIFARDataModule):
    """:class:`CIFARDataModule` with ``name="cifar10"``."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(name="cifar10", **kwargs)


class CIFAR100DataModule(CIFARDataModule):
    """:class:`CIFARDataModule` with ``name="cifar100"``."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(name="cifar100", **kwargs)
