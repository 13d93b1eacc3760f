"""Shared base for the image-classification datamodules.

Every datamodule exposes, right after construction (before :meth:`setup`):

* ``name`` (str), ``num_classes`` (int), ``in_chans`` (int), ``img_size`` (int);
* :meth:`MRLDataModule.set_data_config` taking timm's resolved data config
  (``timm.data.resolve_data_config(model=model)``) so that the large-image datasets build their
  transforms with ``timm.data.create_transform`` (the model's size, mean, std, interpolation and
  crop_pct, nothing hard-coded);
* ``train_dataloader`` (shuffled), ``val_dataloader``, ``test_dataloader`` and
  ``train_eval_dataloader`` (the training split with eval transforms, in a fixed order: for
  extracting embeddings of the database side of retrieval).

Splits
------
``val_size`` (an int count, or a float fraction of the training set) is carved out of the
official training set with a permutation seeded by ``seed``; the validation split therefore
depends only on ``(seed, val_size)`` and not on ``subset``. ``subset=N`` keeps the first ``N``
items of a seeded permutation of the remaining training items (``test_subset`` likewise for the
test split), for fast runs; a subset larger than the split keeps the whole split. With
``val_size=0`` there is no validation split and :meth:`val_dataloader` returns ``[]``
(Lightning then skips validation).

Class splits (the paper's novel-class and long-tail experiments; datasets with label arrays)
--------------------------------------------------------------------------------------------
* ``train_classes=[...]``: the train and val splits keep only those classes (the *base*
  classes); ``train_eval`` (the database of kNN / the support set of few-shot) keeps every
  class, so the held-out *novel* classes can be evaluated few-shot; test keeps every class.
* ``imbalance_ratio=r`` (> 1): a long-tailed train split. Classes are ranked by a permutation
  seeded by ``seed``; the class of rank ``i`` keeps ``round(n_max * r ** (-i / (C - 1)))``
  items (``n_max`` = the smallest class's count in the balanced split), the first ones of a
  seeded permutation of that class. ``train_eval`` is the same long-tailed set; val and
  test stay balanced. :meth:`MRLDataModule.class_groups` names the head / medium / tail thirds.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pytorch_lightning as pl
from torch.utils.data import DataLoader, Dataset

from mrl.core.errors import MRLError
from mrl.core.validate import is_int, is_number
from mrl.run.distributed import shard_sampler

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test", "train_eval")


def check_int(name: str, value: Any, minimum: int, *, allow_none: bool = False) -> int | None:
    """``value`` as an int >= ``minimum`` or an :class:`MRLError` naming ``name``."""
    if value is None and allow_none:
        return None
    if not is_int(value) or value < minimum:
        extra = " or None" if allow_none else ""
        raise MRLError(f"{name}={value!r} is invalid; use an integer >= {minimum}{extra}")
    return int(value)


def check_val_size(value: Any) -> int | float:
    """An int count >= 0 or a float fraction in (0, 1)."""
    if is_int(value) and value >= 0:
        return int(value)
    if isinstance(value, float) and 0.0 < value < 1.0:
        return float(value)
    if isinstance(value, float) and value == 0.0:
        return 0
    raise MRLError(
        f"val_size={value!r} is invalid; use an integer count >= 0 or a fraction in (0, 1) "
        "of the training set"
    )


def resolve_count(val_size: int | float, n_train: int, dataset: str) -> int:
    """Number of validation items for ``val_size`` out of ``n_train`` (at least one left)."""
    n_val = int(round(val_size * n_train)) if isinstance(val_size, float) else int(val_size)
    if n_val >= n_train:
        raise MRLError(
            f"val_size={val_size!r} leaves no training images: {dataset} has {n_train}; use "
            f"0 <= val_size < {n_train} or a fraction in (0, 1)"
        )
    return n_val


def seeded_permutation(n: int, seed: int, stream: int) -> np.ndarray:
    """A permutation of ``range(n)`` fixed by ``(seed, stream)`` (independent of global RNG)."""
    return np.random.default_rng([seed, stream]).permutation(n)


def take_subset(indices: np.ndarray, subset: int | None, seed: int, stream: int) -> np.ndarray:
    """The first ``subset`` items of a seeded permutation of ``indices``, sorted."""
    indices = np.asarray(indices, dtype=np.int64)
    if subset is None or subset >= len(indices):
        return indices
    picked = indices[seeded_permutation(len(indices), seed, stream)[:subset]]
    return np.sort(picked)


def follow_model_transforms(dm: Any, module: Any) -> None:
    """Give ``dm`` the timm data config of ``module``'s backbone (size, mean, std, crop),
    at the data's own channels and image size; no-op for modules without a timm backbone
    (Slim. Net) or data without :meth:`MRLDataModule.set_data_config`."""
    backbone = getattr(getattr(module, "net", None), "backbone", None)
    if backbone is None or not hasattr(dm, "set_data_config"):
        return
    data_cfg = backbone.data_config()
    data_cfg["input_size"] = (int(dm.in_chans), int(dm.img_size), int(dm.img_size))
    dm.set_data_config(data_cfg)


def _check_classes(classes: Any) -> list[int] | None:
    if classes is None:
        return None
    if isinstance(classes, (str, bytes)) or not isinstance(classes, Sequence) or not classes:
        raise MRLError(
            f"train_classes={classes!r} is invalid; give a non-empty list of class ids, "
            "e.g. [0,1,2,3,4], or null for all"
        )
    out = [check_int("train_classes[i]", c, 0) for c in classes]
    if len(set(out)) != len(out):
        raise MRLError(f"train_classes={list(classes)!r} lists a class twice")
    return sorted(out)


def class_ranking(num_classes: int, seed: int) -> np.ndarray:
    """Classes from the most to the least frequent of the long-tail profile (seeded)."""
    return seeded_permutation(num_classes, seed, 3)


def long_tail_indices(
    indices: np.ndarray, labels: np.ndarray, num_classes: int, ratio: float, seed: int
) -> np.ndarray:
    """A seeded exponential long-tail subset of ``indices`` (see the module doc), sorted."""
    by_class = [indices[labels[indices] == c] for c in range(num_classes)]
    present = [len(b) for b in by_class if len(b)]
    n_max = min(present) if present else 0
    keep = []
    for rank, c in enumerate(class_ranking(num_classes, seed)):
        items = by_class[int(c)]
        n = round(n_max * ratio ** (-rank / max(1, num_classes - 1)))
        n = min(len(items), max(1, n)) if len(items) else 0
        keep.append(items[seeded_permutation(len(items), seed, 4 + int(c))[:n]])
    return np.sort(np.concatenate(keep)) if keep else indices[:0]


def channel_stats(values: Sequence[float], in_chans: int, what: str) -> tuple[float, ...]:
    """Adapt a mean/std tuple to ``in_chans`` channels (3 -> 1 averages, 1 -> n repeats)."""
    values = tuple(float(v) for v in values)
    if len(values) == in_chans:
        return values
    if len(values) == 1:
        return values * in_chans
    if in_chans == 1:
        return (sum(values) / len(values),)
    raise MRLError(
        f"data config {what}={values!r} has {len(values)} channels but the dataset has "
        f"{in_chans}; give {in_chans} values or one"
    )


class MRLDataModule(pl.LightningDataModule):
    """Base class: argument checks, seeded splits, the dataloaders and the data-config hook.

    Subclasses set ``name``, ``num_classes``, ``in_chans``, ``img_size`` in ``__init__`` and
    implement :meth:`_load` (read the data once; may download in :meth:`prepare_data`) and
    :meth:`_make_datasets` (the four split datasets with the current transforms).
    """

    name: str = "base"
    num_classes: int
    in_chans: int
    img_size: int

    def __init__(
        self,
        batch_size: int = 256,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        val_size: int | float = 5000,
        seed: int = 0,
        subset: int | None = None,
        test_subset: int | None = None,
        pin_memory: bool = False,
        train_classes: Sequence[int] | None = None,
        imbalance_ratio: float | None = None,
    ) -> None:
        super().__init__()
        self.train_classes = _check_classes(train_classes)
        if imbalance_ratio is not None and (
            not is_number(imbalance_ratio) or not 1 < float(imbalance_ratio) < math.inf
        ):
            raise MRLError(
                f"imbalance_ratio={imbalance_ratio!r} is invalid; use a number > 1 (e.g. 10 or "
                "100: largest / smallest class) or null for the balanced set"
            )
        self.imbalance_ratio = None if imbalance_ratio is None else float(imbalance_ratio)
        self.batch_size = check_int("batch_size", batch_size, 1)
        eval_bs = check_int("eval_batch_size", eval_batch_size, 1, allow_none=True)
        self.eval_batch_size = self.batch_size if eval_bs is None else eval_bs
        self.num_workers = check_int("num_workers", num_workers, 0)
        self.val_size = check_val_size(val_size)
        self.seed = check_int("seed", seed, 0)
        self.subset = check_int("subset", subset, 1, allow_none=True)
        self.test_subset = check_int("test_subset", test_subset, 1, allow_none=True)
        if not isinstance(pin_memory, bool):
            raise MRLError(f"pin_memory={pin_memory!r} is invalid; use true or false")
        self.pin_memory = pin_memory
        self.data_config: dict[str, Any] | None = None
        self._loaded = False
        self._datasets: dict[str, Dataset | None] | None = None

    # ------------------------------------------------------------------ subclass hooks
    def _load(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def _make_datasets(self) -> dict[str, Dataset | None]:  # pragma: no cover - abstract
        raise NotImplementedError

    def _on_data_config(self, cfg: dict[str, Any]) -> None:
        """React to a new data config (default: adopt its image size)."""
        self.img_size = int(cfg["input_size"][-1])

    # ------------------------------------------------------------------ public API
    def set_data_config(self, cfg: Mapping[str, Any]) -> None:
        """Use timm's resolved data config (input_size, mean, std, interpolation, crop_pct).

        The large-image datasets build their transforms from it with
        ``timm.data.create_transform(**cfg, is_training=...)`` and adopt its image size. The
        number of channels always comes from the dataset (``in_chans``); mean/std are adapted
        to it. May be called before or after :meth:`setup`.
        """
        if not isinstance(cfg, Mapping) or "input_size" not in cfg:
            raise MRLError(
                f"data config {cfg!r} is invalid; pass timm.data.resolve_data_config(model=...) "
                "output (a dict with input_size, mean, std, interpolation, crop_pct)"
            )
        cfg = dict(cfg)
        size = cfg["input_size"]
        if is_int(size):
            size = (self.in_chans, int(size), int(size))
        if (
            not isinstance(size, Sequence)
            or len(size) not in (2, 3)
            or not all(is_int(s) and s >= 1 for s in size)
        ):
            raise MRLError(
                f"data config input_size={cfg['input_size']!r} is invalid; use (C, H, W) with "
                "positive integers"
            )
        size = tuple(int(s) for s in size)[-2:]
        cfg["input_size"] = (self.in_chans, *size)
        for key in ("mean", "std"):
            if key in cfg and cfg[key] is not None:
                cfg[key] = channel_stats(cfg[key], self.in_chans, key)
        self.data_config = cfg
        self._on_data_config(cfg)
        self._datasets = None  # rebuilt with the new transforms on next use

    def setup(self, stage: str | None = None) -> None:
        if not self._loaded:
            self._load()
            self._loaded = True
        if self._datasets is None:
            self._datasets = self._make_datasets()

    def dataset(self, split: str) -> Dataset | None:
        """The dataset behind a split (``train``, ``val``, ``test``, ``train_eval``)."""
        if split not in SPLITS:
            raise MRLError(f"split={split!r} is invalid; use one of {', '.join(SPLITS)}")
        self.setup()
        assert self._datasets is not None
        return self._datasets.get(split)

    def split_sizes(self) -> dict[str, int]:
        """Number of items in train / val / test."""
        return {
            s: (0 if (d := self.dataset(s)) is None else len(d))  # type: ignore[arg-type]
            for s in ("train", "val", "test")
        }

    def collate_fn(self, split: str):
        """Collate function for a split (default: torch's default collate)."""
        return None

    def _loader(self, split: str, *, shuffle: bool, batch_size: int) -> DataLoader:
        ds = self.dataset(split)
        if ds is None:
            raise MRLError(f"{self.name} has no {split} split")
        # evaluation splits under DDP: an unpadded shard per rank (every sample counted once)
        sampler = None if shuffle else shard_sampler(ds)
        # a training batch of one sample cannot train BatchNorm ("Expected more than 1 value
        # per channel"): drop that last single sample of each epoch (it is reshuffled in the next)
        drop_last = shuffle and len(ds) % batch_size == 1 and len(ds) > 1
        if drop_last:
            log.info(
                "%s: %d training samples with batch size %d leave a last batch of 1, which "
                "BatchNorm cannot train on; it is dropped each epoch",
                self.name,
                len(ds),
                batch_size,
            )
        return DataLoader(
            ds,
            batch_size=batch_size,
            shuffle=shuffle,
            sampler=sampler,
            drop_last=drop_last,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.num_workers > 0,
            collate_fn=self.collate_fn(split),
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True, batch_size=self.batch_size)

    def val_dataloader(self) -> DataLoader | list:
        if self.dataset("val") is None:
            return []
        return self._loader("val", shuffle=False, batch_size=self.eval_batch_size)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False, batch_size=self.eval_batch_size)

    def train_eval_dataloader(self) -> DataLoader:
        """The training split with eval transforms and no shuffling (embedding extraction)."""
        return self._loader("train_eval", shuffle=False, batch_size=self.eval_batch_size)

    def predict_dataloader(self) -> DataLoader:
        return self.test_dataloader()

    # ------------------------------------------------------------------ split helpers
    def _train_val_indices(self, n_train: int) -> tuple[np.ndarray, np.ndarray]:
        """Seeded ``(train, val)`` index arrays over the official training set (sorted)."""
        n_val = resolve_count(self.val_size, n_train, self.name)
        perm = seeded_permutation(n_train, self.seed, 0)
        val = np.sort(perm[:n_val])
        train = np.sort(perm[n_val:])
        return take_subset(train, self.subset, self.seed, 1), val

    def _class_split(
        self, train: np.ndarray, val: np.ndarray, labels: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(train, val, train_eval)`` indices after ``train_classes`` / ``imbalance_ratio``
        (see the module doc); without either, ``(train, val, train)``."""
        train_eval = train
        if self.train_classes is not None:
            bad = [c for c in self.train_classes if c >= self.num_classes]
            if bad:
                raise MRLError(
                    f"train_classes has {bad[0]}, but {self.name} has classes "
                    f"0..{self.num_classes - 1}"
                )
            keep = np.asarray(self.train_classes)
            train = train[np.isin(labels[train], keep)]
            val = val[np.isin(labels[val], keep)]
        if self.imbalance_ratio is not None:
            train = long_tail_indices(
                train, labels, self.num_classes, self.imbalance_ratio, self.seed
            )
            train_eval = train
        return train, val, train_eval

    def class_groups(self) -> dict[str, list[int]]:
        """``{"head", "medium", "tail"}`` -> classes, by rank of the long-tail profile (the
        first, middle and last third of the ranks); every class is "head" when balanced."""
        if self.imbalance_ratio is None:
            return {"head": list(range(self.num_classes)), "medium": [], "tail": []}
        order = class_ranking(self.num_classes, self.seed)
        c = self.num_classes
        return {
            "head": sorted(int(k) for k in order[: math.ceil(c / 3)]),
            "medium": sorted(int(k) for k in order[math.ceil(c / 3) : c - c // 3]),
            "tail": sorted(int(k) for k in order[c - c // 3 :]),
        }

    def _test_indices(self, n_test: int) -> np.ndarray:
        return take_subset(np.arange(n_test), self.test_subset, self.seed, 2)

    def __repr__(self) -> str:
        """Names every option that decides which samples each split holds (the embedding
        cache is keyed by it), and the shapes."""
        return (
            f"{type(self).__name__}(name={self.name!r}, num_classes={self.num_classes}, "
            f"in_chans={self.in_chans}, img_size={self.img_size}, "
            f"root={str(getattr(self, 'root', None))!r}, subset={self.subset}, "
            f"val_size={self.val_size}, test_subset={self.test_subset}, seed={self.seed}, "
            f"train_classes={self.train_classes}, imbalance_ratio={self.imbalance_ratio})"
        )


def fraction_ok(value: Any) -> bool:
    return is_number(value) and math.isfinite(value)
