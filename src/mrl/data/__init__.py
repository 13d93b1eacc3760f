"""LightningDataModules for image classification.

``DATAMODULES`` maps a dataset name to its datamodule class; :func:`build_datamodule`
instantiates one by name. Every datamodule exposes ``name``, ``num_classes``, ``in_chans``
and ``img_size`` right after construction and takes timm's data config through
``set_data_config`` (see :mod:`mrl.data.base`).
"""

from __future__ import annotations

from typing import Any

from mrl.core.errors import MRLError
from mrl.data.base import MRLDataModule
from mrl.data.cifar import CIFAR10DataModule, CIFAR100DataModule, CIFARDataModule
from mrl.data.fashion_mnist import FashionMNISTDataModule
from mrl.data.idx import read_idx
from mrl.data.image_text import (  # (image, caption) pairs, not in DATAMODULES
    FashionMNISTCaptionsDataModule,
    ImageTextDataModule,
)
from mrl.data.imagefolder import ImageFolderDataModule, ImageNetDataModule
from mrl.data.wordnet import WordNetDataModule  # text (retrieval pairs), not in DATAMODULES

DATAMODULES: dict[str, type[MRLDataModule]] = {
    "fashion_mnist": FashionMNISTDataModule,
    "cifar10": CIFAR10DataModule,
    "cifar100": CIFAR100DataModule,
    "imagenet": ImageNetDataModule,
    "imagefolder": ImageFolderDataModule,
}


def build_datamodule(name: str, **kwargs: Any) -> MRLDataModule:
    """Instantiate ``DATAMODULES[name](**kwargs)``; unknown names raise MRLError."""
    key = str(name).lower().replace("-", "_")
    if key not in DATAMODULES:
        raise MRLError(f"dataset {name!r} is unknown; use one of {', '.join(DATAMODULES)}")
    return DATAMODULES[key](**kwargs)


__all__ = [
    "DATAMODULES",
    "CIFAR10DataModule",
    "CIFAR100DataModule",
    "CIFARDataModule",
    "FashionMNISTCaptionsDataModule",
    "FashionMNISTDataModule",
    "ImageFolderDataModule",
    "ImageNetDataModule",
    "ImageTextDataModule",
    "MRLDataModule",
    "WordNetDataModule",
    "build_datamodule",
    "read_idx",
]
