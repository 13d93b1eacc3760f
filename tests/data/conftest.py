"""Fixtures for the datamodule tests: tiny IDX files and image folders."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mrl_data_helpers import CLASSES, encoded_images, save_images, write_idx


@pytest.fixture
def idx_dir(tmp_path: Path) -> Path:
    """50 train + 20 test Fashion-MNIST-style IDX files (images gzipped, labels plain)."""
    d = tmp_path / "fmnist"
    d.mkdir()
    write_idx(d / "train-images-idx3-ubyte", encoded_images(50), gz=True)
    write_idx(d / "train-labels-idx1-ubyte", (np.arange(50) % 10).astype(np.uint8), gz=False)
    write_idx(d / "t10k-images-idx3-ubyte", encoded_images(20, offset=100), gz=False)
    write_idx(d / "t10k-labels-idx1-ubyte", (np.arange(20) % 10).astype(np.uint8), gz=True)
    return d


@pytest.fixture
def flat_folder(tmp_path: Path) -> Path:
    """root/<class>/ with 3 classes x 6 images."""
    root = tmp_path / "flat"
    for i, c in enumerate(CLASSES):
        save_images(root / c, 6, seed=i)
    return root


@pytest.fixture
def split_folder(tmp_path: Path) -> Path:
    """root/train/<class>/ (3 x 6 images) and root/val/<class>/ (3 x 2 images)."""
    root = tmp_path / "split"
    for i, c in enumerate(CLASSES):
        save_images(root / "train" / c, 6, seed=i)
        save_images(root / "val" / c, 2, seed=10 + i)
    return root
