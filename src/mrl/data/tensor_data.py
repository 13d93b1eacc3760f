"""In-memory uint8 image tensors with batch-level (vectorised) augmentation.

Used by the small-image paths (Fashion-MNIST, CIFAR at native size): the whole split is one
``uint8`` tensor ``[N, C, H, W]``; the DataLoader asks for a whole batch at once through
``Dataset.__getitems__`` and the random crop (zero padding) + horizontal flip, the
normalisation and an optional resize are done on the batch tensor, so a batch of 256 costs
a few tensor ops instead of 256 PIL round trips. Use :func:`collate_tensor_batch` as the
loader's ``collate_fn``.

Random numbers come from torch's global generator, which the DataLoader seeds per worker
(and ``pytorch_lightning.seed_everything`` seeds in the main process).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset
from torch.utils.data._utils.collate import default_collate


class TensorBatch(tuple):
    """``(images, labels)`` of a whole batch, as returned by ``__getitems__``."""


def collate_tensor_batch(data: Any) -> Any:
    """Pass a :class:`TensorBatch` through as a plain tuple; default-collate anything else."""
    if isinstance(data, TensorBatch):
        return tuple(data)
    return default_collate(data)


@contextlib.contextmanager
def single_thread() -> Iterator[None]:
    """Run small tensor ops on one intra-op thread.

    Batch assembly works on ~1 MB tensors, where spreading each op over the intra-op thread
    pool costs far more than it gains (10-50x slower on a busy 2-core machine). DataLoader
    workers already run single-threaded; in the main process (``num_workers=0``) the thread
    count is restored afterwards.
    """
    n = torch.get_num_threads()
    if n == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def random_crop_flip(x: torch.Tensor, pad: int, flip: bool) -> torch.Tensor:
    """Per-sample random crop of ``x`` [B, C, H, W] after zero padding by ``pad``, and a
    random horizontal flip (p=0.5), as one gather over the flattened padded images."""
    b, c, h, w = x.shape
    if pad <= 0 and not flip:
        return x
    hp, wp = h + 2 * pad, w + 2 * pad
    flat = F.pad(x, (pad, pad, pad, pad)) if pad > 0 else x
    flat = flat.reshape(b, c, hp * wp)
    oy = torch.randint(0, 2 * pad + 1, (b, 1, 1))
    ox = torch.randint(0, 2 * pad + 1, (b, 1, 1))
    cols = torch.arange(w).expand(b, 1, w)
    if flip:
        cols = torch.where(torch.rand(b, 1, 1) < 0.5, (w - 1) - cols, cols)
    rows = torch.arange(h).view(1, h, 1) + oy  # [b, h, 1]
    index = (rows * wp + ox + cols).reshape(b, 1, h * w).expand(b, c, h * w)
    return flat.gather(2, index).reshape(b, c, h, w)


class TensorImageDataset(Dataset):
    """A split of an in-memory uint8 image tensor.

    Args:
        images: uint8 ``[N, C, H, W]`` (shared between splits, not copied).
        labels: int64 ``[N]``.
        indices: the items of this split (positions in ``images``).
        train: apply the random crop / flip augmentation.
        pad: zero padding of the random crop (``0``: no crop).
        flip: random horizontal flip.
        img_size: output size; the batch is resized (bilinear, on tensors) when it differs.
        mean, std: per-channel normalisation of the [0, 1] pixel values.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        indices: Sequence[int] | torch.Tensor,
        *,
        train: bool,
        pad: int,
        flip: bool,
        img_size: int,
        mean: Sequence[float],
        std: Sequence[float],
    ) -> None:
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise TypeError("images must be a uint8 tensor [N, C, H, W]")
        self.images = images
        self.labels = labels
        self.indices = torch.as_tensor(indices, dtype=torch.long)
        self.train = train
        self.pad = pad
        self.flip = flip
        self.img_size = int(img_size)
        c = images.shape[1]
        std_t = torch.tensor(std, dtype=torch.float32).view(1, c, 1, 1)
        mean_t = torch.tensor(mean, dtype=torch.float32).view(1, c, 1, 1)
        # (x / 255 - mean) / std == x * scale + shift
        self._scale = 1.0 / (255.0 * std_t)
        self._shift = -mean_t / std_t

    def __len__(self) -> int:
        return len(self.indices)

    @property
    def targets(self) -> torch.Tensor:
        """Labels of this split, in order."""
        return self.labels[self.indices]

    def get_batch(self, idx: Sequence[int] | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Images (normalised float32 ``[B, C, img_size, img_size]``) and labels of ``idx``."""
        with single_thread():
            sel = self.indices[torch.as_tensor(idx, dtype=torch.long)]
            x = self.images[sel]
            y = self.labels[sel]
            if self.train:
                x = random_crop_flip(x, self.pad, self.flip)
            resize = x.shape[-1] != self.img_size or x.shape[-2] != self.img_size
            if not resize:
                return x.float().mul_(self._scale).add_(self._shift), y
        # Large outputs: resize on uint8 (2-3x faster than float32), then normalise.
        x = F.interpolate(
            x, size=(self.img_size, self.img_size), mode="bilinear", align_corners=False
        )
        return x.float().mul_(self._scale).add_(self._shift), y

    def __getitems__(self, idx: Sequence[int]) -> TensorBatch:
        return TensorBatch(self.get_batch(list(idx)))

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not -len(self) <= int(i) < len(self):
            raise IndexError(f"index {i} out of range for {len(self)} items")
        x, y = self.get_batch([int(i) % len(self)])
        return x[0], y[0]
