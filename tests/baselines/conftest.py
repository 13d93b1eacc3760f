"""Real Fashion-MNIST data for the baseline tests: flattened pixels as a 784-d 'representation'.

The images are the official IDX files (``/usr/share/datasets/fashion-mnist`` or wherever
:class:`mrl.data.FashionMNISTDataModule` finds them). ``ff_classifier`` is a real linear
classifier (multinomial logistic regression) trained on those pixels: it plays FF-max's
classification layer for the SVD baseline.
"""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mrl.data import FashionMNISTDataModule


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """One torch intra-op thread per test module (restored afterwards): on 2 shared cores,
    2 spinning OpenMP threads were measured 10-40x slower than 1 when the machine is busy."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def read_head(path: Path, n: int) -> np.ndarray:
    """The first ``n`` items of a uint8 IDX file (gzipped or not) without reading the rest."""
    with open(path, "rb") as f:
        opener = gzip.open if f.read(2) == b"\x1f\x8b" else open
    with opener(path, "rb") as f:
        magic = f.read(4)
        assert magic[:3] == b"\x00\x00\x08", f"{path} is not a uint8 IDX file"
        shape = struct.unpack(f">{magic[3]}I", f.read(4 * magic[3]))
        item = int(np.prod(shape[1:], dtype=np.int64))
        data = np.frombuffer(f.read(n * item), dtype=np.uint8)
    return data.reshape(n, *shape[1:])


@pytest.fixture(scope="session")
def fmnist_pixels() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """2000 train / 1000 test images as float32 pixels in [0, 1], shape (n, 784)."""
    files = FashionMNISTDataModule(download=False).resolve_files(download=False)

    def load(split: str, n: int) -> tuple[np.ndarray, np.ndarray]:
        x = read_head(files[f"{split}_images"], n).reshape(n, -1).astype(np.float32) / 255.0
        return x, read_head(files[f"{split}_labels"], n).astype(np.int64)

    return (*load("train", 2000), *load("test", 1000))


@pytest.fixture(scope="module")
def ff_classifier(fmnist_pixels) -> tuple[np.ndarray, np.ndarray]:
    """``(W: 10 x 784, b: 10)`` of a logistic regression fitted on the 2000 train images."""
    train_x, train_y, _, _ = fmnist_pixels
    x, y = torch.from_numpy(train_x), torch.from_numpy(train_y)
    torch.manual_seed(0)
    lin = torch.nn.Linear(784, 10)
    opt = torch.optim.Adam(lin.parameters(), lr=0.05)
    for _ in range(150):
        loss = F.cross_entropy(lin(x), y) + 1e-4 * lin.weight.pow(2).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return lin.weight.detach().numpy().copy(), lin.bias.detach().numpy().copy()
