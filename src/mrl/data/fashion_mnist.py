"""Fashion-MNIST (Xiao et al., 2017): 60k train / 10k test grey 28x28 images, 10 classes.

Where the files come from (the four official IDX files, gzipped or not):

* ``root`` given: ``root/`` or ``root/FashionMNIST/raw/`` (torchvision's layout); when they
  are missing and ``download=True``, torchvision downloads them there.
* ``root=None``: ``/usr/share/datasets/fashion-mnist`` when it holds them (Debian's
  ``dataset-fashion-mnist`` package), else ``~/.cache/mrl/fashion_mnist`` (downloaded by
  torchvision's ``FashionMNIST(download=True)`` when missing).

The data live in memory as one uint8 tensor per official split; batches are built and
augmented on tensors (random crop with 2-pixel zero padding + horizontal flip), see
:mod:`mrl.data.tensor_data`. Normalisation uses Fashion-MNIST's mean/std (0.2860, 0.3530).
``img_size`` other than 28 resizes the batches (bilinear, on tensors).

The data config from :meth:`set_data_config` is recorded but does not change this pipeline:
the image size is the constructor's ``img_size`` (timm configs say 224 for nearly every model,
which would make a small-image run ~60x slower) and the channels stay 1.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from mrl.core.errors import MRLError
from mrl.data.base import MRLDataModule, check_int
from mrl.data.idx import read_idx
from mrl.data.tensor_data import TensorImageDataset, collate_tensor_batch

__all__ = ["FashionMNISTDataModule", "read_idx", "find_idx_files", "CLASSES"]

SYSTEM_ROOT = Path("/usr/share/datasets/fashion-mnist")
CACHE_ROOT = Path("~/.cache/mrl/fashion_mnist")
FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
MEAN = (0.2860,)
STD = (0.3530,)
CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)


def find_idx_files(directory: str | os.PathLike) -> dict[str, Path] | None:
    """The four IDX files in ``directory`` (or its ``FashionMNIST/raw``), or None if incomplete."""
    directory = Path(directory).expanduser()
    for d in (directory, directory / "FashionMNIST" / "raw"):
        found: dict[str, Path] = {}
        for key, stem in FILES.items():
            for name in (stem + ".gz", stem):
                if (d / name).is_file():
                    found[key] = d / name
                    break
        if len(found) == len(FILES):
            return found
    return None


def _download(directory: Path) -> None:
    """Fetch the files with torchvision into ``directory/FashionMNIST/raw``."""
    from torchvision.datasets import FashionMNIST

    try:
        directory.mkdir(parents=True, exist_ok=True)
        FashionMNIST(str(directory), train=True, download=True)
        FashionMNIST(str(directory), train=False, download=True)
    except Exception as e:  # network errors come in many types
        raise MRLError(
            f"Fashion-MNIST files are not in {directory} and downloading them failed "
            f"({type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else e!r}); "
            f"put {', '.join(s + '.gz' for s in FILES.values())} there or pass root=<folder>"
        ) from e


@functools.lru_cache(maxsize=2)
def _load_tensors(
    key: tuple[tuple[str, int, int], ...],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(train_x, train_y, test_x, test_y) for the files in ``key`` (path, mtime, size)."""
    paths = dict(zip(FILES, (Path(p) for p, _, _ in key), strict=True))
    out: list[torch.Tensor] = []
    for split in ("train", "test"):
        img_path, lbl_path = paths[f"{split}_images"], paths[f"{split}_labels"]
        images = read_idx(img_path)
        labels = read_idx(lbl_path)
        if images.ndim != 3 or images.dtype != np.uint8:
            raise MRLError(
                f"{img_path} holds a {images.dtype} array of shape {images.shape}; expected "
                "uint8 images of shape (N, H, W)"
            )
        if labels.ndim != 1 or len(labels) != len(images):
            raise MRLError(
                f"{lbl_path} holds {labels.shape} labels for the {len(images)} images of "
                f"{img_path}; expected one label per image"
            )
        if len(labels) and (labels.min() < 0 or labels.max() >= len(CLASSES)):
            raise MRLError(
                f"{lbl_path} has labels in [{labels.min()}, {labels.max()}]; expected 0..9"
            )
        out.append(torch.from_numpy(images).unsqueeze(1).contiguous())
        out.append(torch.from_numpy(labels.astype(np.int64)))
    return out[0], out[1], out[2], out[3]


class FashionMNISTDataModule(MRLDataModule):
    """Fashion-MNIST from the official IDX files, in memory, with tensor-side augmentation.

    Args:
        root: folder holding the IDX files (see the module doc for ``None``).
        img_size: output size (28 native; other sizes resize batches on tensors).
        download: download with torchvision when the files are missing.
        augment: random crop (padding 2) + horizontal flip on the training split.
        **common: ``batch_size``, ``eval_batch_size``, ``num_workers``, ``val_size``, ``seed``,
            ``subset``, ``test_subset``, ``pin_memory``, ``train_classes``,
            ``imbalance_ratio``: see :class:`~mrl.data.base.MRLDataModule`.
    """

    name = "fashion_mnist"
    classes = CLASSES
    mean = MEAN
    std = STD

    def __init__(
        self,
        root: str | os.PathLike | None = None,
        img_size: int = 28,
        download: bool = True,
        augment: bool = True,
        **common: Any,
    ) -> None:
        super().__init__(**common)
        self.root = None if root is None else Path(root).expanduser()
        if self.root is not None and self.root.exists() and not self.root.is_dir():
            raise MRLError(f"root={str(root)!r} is a file; pass the folder holding the IDX files")
        self.img_size = check_int("img_size", img_size, 1)
        self.download = bool(download)
        self.augment = bool(augment)
        self.num_classes = len(CLASSES)
        self.in_chans = 1
        self._data: tuple[torch.Tensor, ...] | None = None

    # ------------------------------------------------------------------ files
    def _candidate_dir(self) -> Path:
        if self.root is not None:
            return self.root
        if find_idx_files(SYSTEM_ROOT) is not None:
            return SYSTEM_ROOT
        return CACHE_ROOT.expanduser()

    def resolve_files(self, download: bool | None = None) -> dict[str, Path]:
        """Paths of the four IDX files, downloading them first when allowed and missing."""
        directory = self._candidate_dir()
        files = find_idx_files(directory)
        if files is None:
            if not (self.download if download is None else download):
                raise MRLError(
                    f"Fashion-MNIST files are not in {directory}; put "
                    f"{', '.join(s + '.gz' for s in FILES.values())} there or set download=true"
                )
            _download(directory)
            files = find_idx_files(directory)
            if files is None:  # pragma: no cover - torchvision changed its layout
                raise MRLError(f"Fashion-MNIST download to {directory} did not produce the files")
        return files

    def prepare_data(self) -> None:
        self.resolve_files()

    def _load(self) -> None:
        files = self.resolve_files()
        key = tuple(
            (str(files[k].resolve()), files[k].stat().st_mtime_ns, files[k].stat().st_size)
            for k in FILES
        )
        self._data = _load_tensors(key)

    # ------------------------------------------------------------------ datasets
    def _on_data_config(self, cfg: dict[str, Any]) -> None:
        """Recorded only: this module keeps its own size (``img_size``) and normalisation."""

    def _make_datasets(self) -> dict[str, Dataset | None]:
        assert self._data is not None
        train_x, train_y, test_x, test_y = self._data
        train_idx, val_idx = self._train_val_indices(len(train_x))
        labels = train_y.numpy() if hasattr(train_y, "numpy") else np.asarray(train_y)
        train_idx, val_idx, train_eval_idx = self._class_split(train_idx, val_idx, labels)
        test_idx = self._test_indices(len(test_x))

        def make(x: torch.Tensor, y: torch.Tensor, idx: np.ndarray, train: bool):
            return TensorImageDataset(
                x,
                y,
                torch.from_numpy(idx),
                train=train and self.augment,
                pad=2,
                flip=True,
                img_size=self.img_size,
                mean=MEAN,
                std=STD,
            )

        return {
            "train": make(train_x, train_y, train_idx, True),
            "val": make(train_x, train_y, val_idx, False) if len(val_idx) else None,
            "test": make(test_x, test_y, test_idx, False),
            "train_eval": make(train_x, train_y, train_eval_idx, False),
        }

    def collate_fn(self, split: str):
        return collate_tensor_batch
