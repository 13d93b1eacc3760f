"""Helpers for the datamodule tests: IDX writer, fake CIFAR pickles, image folders."""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np
from PIL import Image

IDX_CODES = {np.dtype(np.uint8): 0x08, np.dtype(np.int32): 0x0C, np.dtype(np.float32): 0x0D}


def write_idx(path: Path, arr: np.ndarray, gz: bool) -> Path:
    """Write ``arr`` as an IDX file (big-endian data), gzipped when ``gz``."""
    arr = np.asarray(arr)
    header = bytes([0, 0, IDX_CODES[arr.dtype], arr.ndim]) + struct.pack(
        f">{arr.ndim}I", *arr.shape
    )
    payload = header + arr.astype(arr.dtype.newbyteorder(">")).tobytes()
    if gz:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(payload))
    else:
        path.write_bytes(payload)
    return path


def encoded_images(n: int, offset: int = 0) -> np.ndarray:
    """Images whose centre pixel encodes their index (so splits can be checked)."""
    rng = np.random.default_rng(offset)
    x = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    x[:, 14, 14] = (np.arange(n) + offset) % 256
    return x


def make_cifar(root: Path, name: str, n_train: int, n_test: int) -> Path:
    rng = np.random.default_rng(0)
    if name == "cifar10":
        folder, label_key, k = root / "cifar-10-batches-py", "labels", 10
        train_files = [f"data_batch_{i}" for i in range(1, 6)]
        test_files, meta = ["test_batch"], ("batches.meta", "label_names")
    else:
        folder, label_key, k = root / "cifar-100-python", "fine_labels", 100
        train_files, test_files, meta = ["train"], ["test"], ("meta", "fine_label_names")
    folder.mkdir(parents=True)
    per = n_train // len(train_files)
    for files, n in ((train_files, per), (test_files, n_test)):
        for f in files:
            entry = {
                "data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                label_key: list(rng.integers(0, k, n)),
            }
            (folder / f).write_bytes(pickle.dumps(entry))
    (folder / meta[0]).write_bytes(pickle.dumps({meta[1]: [f"c{i}" for i in range(k)]}))
    return root


def save_images(directory: Path, n: int, size: int = 20, seed: int = 0) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        arr = rng.integers(0, 256, (size, size + 4, 3), dtype=np.uint8)
        p = directory / f"img{i}.png"
        Image.fromarray(arr).save(p)
        paths.append(p)
    return paths


CLASSES = ("cat", "dog", "eel")
