"""(image, caption) pairs for dual-encoder training (``objective=image_text``).

Two sources, one batch format:

* :class:`ImageTextDataModule` (``data=image_text``): a CSV (header row) or JSONL file (one
  JSON object per line, ``.jsonl``) with an image-path column (relative to the file's folder,
  or absolute) and a caption column, optionally a class-label column (enables zero-shot and
  kNN evaluation). Rows of the same image are one item with several captions (COCO: five).
  Images are split, never rows: ``val_size`` images of the training file are held out
  (seeded), the test split is ``test_path`` when given, else ``test_size`` images held out
  (seeded) before the validation split.
* :class:`FashionMNISTCaptionsDataModule` (``data=fashion_mnist_captions``, offline):
  Fashion-MNIST (its official splits, ``subset``, ``val_size``, ... as
  :class:`~mrl.data.FashionMNISTDataModule`), each image captioned from its class: the
  :data:`TEMPLATES` filled with the class name, plus the WordNet 3.0 gloss of the class's
  synset (:data:`FASHION_SYNSETS`, read with NLTK's reader as :mod:`mrl.data.wordnet`).

Batches are dicts. Training: ``{"image": (B, C, H, W), "text": captions}``, the caption of
each image drawn uniformly from its captions every time the image is drawn (torch's global
generator: seeded runs repeat). Evaluation (``val``, ``test``, ``train_eval``):
``{"image", "group": LongTensor, "label": LongTensor}`` (label -1 without labels), with
``group`` the relevance key: the image's row for a file (its own captions are relevant), the
class for the Fashion-MNIST captions (every caption of the class is relevant). The texts of
an evaluation split come from :meth:`eval_texts` (captions and their groups; the Fashion-MNIST
captions: each distinct caption once), the zero-shot prompts from :meth:`class_prompts`.
Texts are strings, or the model's tokens once it gave its tokenizer (:meth:`set_tokenizer`).
"""

from __future__ import annotations

import csv
import functools
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from mrl.core.errors import MRLError
from mrl.data.base import MRLDataModule, channel_stats, check_int, seeded_permutation, take_subset
from mrl.data.fashion_mnist import FashionMNISTDataModule
from mrl.data.imagefolder import _READ_ERRORS, to_mode

Tokenize = Callable[[list[str]], dict[str, torch.Tensor]]

#: caption templates; ``{a}`` is the class name with its indefinite article
TEMPLATES = (
    "a photo of {a}.",
    "a black and white photo of {a}.",
    "a low resolution photo of {a}.",
    "a small grayscale picture of {a}.",
    "a product image of {a}.",
    "{a}, centred on a black background.",
)
#: Fashion-MNIST classes 0..9: caption name and the WordNet 3.0 noun synset of its gloss
#: (WordNet has no "ankle boot": boot.n.01; the bag of the images is a handbag: bag.n.04;
#: "T-shirt" is a lemma of jersey.n.03; "sneaker" of gym_shoe.n.01)
FASHION_SYNSETS = (
    ("t-shirt", "jersey.n.03"),
    ("trouser", "trouser.n.01"),
    ("pullover", "pullover.n.01"),
    ("dress", "dress.n.01"),
    ("coat", "coat.n.01"),
    ("sandal", "sandal.n.01"),
    ("shirt", "shirt.n.01"),
    ("sneaker", "gym_shoe.n.01"),
    ("bag", "bag.n.04"),
    ("ankle boot", "boot.n.01"),
)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def with_article(name: str) -> str:
    """``name`` with ``a`` / ``an`` (by its first letter)."""
    return f"{'an' if name[:1].lower() in 'aeiou' else 'a'} {name}"


def fill_templates(name: str, templates: Sequence[str] = TEMPLATES) -> list[str]:
    """Every template filled with ``name`` (``{a}``: with its article; ``{name}``: bare)."""
    return [t.format(a=with_article(name), name=name) for t in templates]


def fashion_glosses(root: str | os.PathLike, cache_dir: str | os.PathLike) -> list[str]:
    """The WordNet gloss of each Fashion-MNIST class's synset (:data:`FASHION_SYNSETS`)."""
    from mrl.data.wordnet import check_root, load_synsets

    records = load_synsets(str(check_root(root)), str(Path(cache_dir).expanduser()))
    by_name = {r["name"]: r["gloss"] for r in records}
    missing = [s for _, s in FASHION_SYNSETS if s not in by_name]
    if missing:
        raise MRLError(f"WordNet at {root} has no synset {missing[0]}; use WordNet 3.0")
    return [by_name[s] for _, s in FASHION_SYNSETS]


class _Batch(dict):
    """A whole batch built by ``__getitems__`` (collate only tokenises)."""


def collate_image_text(data: Any, tokenize: Tokenize | None = None) -> dict[str, Any]:
    """A batch dict (``text`` tokenised when a tokenizer is given)."""
    batch = dict(data) if isinstance(data, _Batch) else _stack(data)
    if "text" in batch and tokenize is not None:
        batch["text"] = tokenize(list(batch["text"]))
    return batch


def _stack(items: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {"image": torch.stack([it["image"] for it in items])}
    for key in ("group", "label"):
        if key in items[0]:
            out[key] = torch.as_tensor([it[key] for it in items], dtype=torch.long)
    if "text" in items[0]:
        out["text"] = [it["text"] for it in items]
    return out


class ImageTextItems(Dataset):
    """One split: images of ``images`` (``(image, label)`` items, or whole batches through
    ``__getitems__``) with their group keys; training items draw one of their group's
    captions, evaluation items carry ``group`` and ``label``."""

    def __init__(
        self,
        images: Dataset,
        groups: np.ndarray,
        captions: Sequence[Sequence[str]] | None = None,
    ) -> None:
        self.images = images
        self.groups = np.asarray(groups, np.int64)
        self.captions = captions

    def __len__(self) -> int:
        return len(self.groups)

    def _caption(self, group: int) -> str:
        caps = self.captions[group]  # type: ignore[index]
        return caps[int(torch.randint(len(caps), ()))]

    def _pack(self, x: torch.Tensor, y: torch.Tensor, idx: Sequence[int]) -> _Batch:
        g = self.groups[list(idx)]
        if self.captions is not None:
            return _Batch(image=x, text=[self._caption(int(k)) for k in g])
        label = torch.as_tensor(y, dtype=torch.long)
        return _Batch(image=x, group=torch.from_numpy(g), label=label)

    def __getitems__(self, idx: Sequence[int]) -> _Batch:
        if hasattr(self.images, "__getitems__"):
            x, y = tuple(self.images.__getitems__(list(idx)))
        else:
            items = [self.images[int(i)] for i in idx]
            x = torch.stack([a for a, _ in items])
            y = torch.as_tensor([int(b) for _, b in items], dtype=torch.long)
        return self._pack(x, y, idx)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {k: v[0] for k, v in self.__getitems__([int(i)]).items()}


class _ImageTextMixin:
    """What both data modules share: the tokenizer hook and the collate function."""

    tokenize: Tokenize | None = None

    def set_tokenizer(self, tokenize: Tokenize | None) -> None:
        """Tokenise the captions of every training batch with ``tokenize`` (None: strings)."""
        self.tokenize = tokenize

    def collate_fn(self, split: str):
        return functools.partial(collate_image_text, tokenize=self.tokenize)


# ----------------------------------------------------------------------------- Fashion-MNIST
class FashionMNISTCaptionsDataModule(_ImageTextMixin, FashionMNISTDataModule):
    """Fashion-MNIST images with class captions (see the module doc).

    Args:
        wordnet_root: the WordNet 3.0 database folder (Debian: ``/usr/share/wordnet``).
        wordnet_cache_dir: where :mod:`mrl.data.wordnet` keeps its NLTK-readable copy.
        templates: caption templates (``{a}``: the name with its article; default
            :data:`TEMPLATES`); the zero-shot prompts are these templates.
        gloss: add the WordNet gloss to each class's captions.
        augment: random crop + flip of the training images (off by default here).
        **kwargs: as :class:`~mrl.data.FashionMNISTDataModule` (``root``, ``img_size``,
            ``augment``, ``batch_size``, ``val_size``, ``subset``, ``test_subset``, ``seed``, ...).
    """

    name = "fashion_mnist_captions"

    def __init__(
        self,
        wordnet_root: str | os.PathLike = "/usr/share/wordnet",
        wordnet_cache_dir: str | os.PathLike = "~/.cache/mrl/wordnet",
        templates: Sequence[str] | None = None,
        gloss: bool = True,
        augment: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(augment=augment, **kwargs)
        self.wordnet_root = Path(wordnet_root).expanduser()
        self.wordnet_cache_dir = Path(wordnet_cache_dir).expanduser()
        templates = list(TEMPLATES if templates is None else templates)
        if not templates or not all(isinstance(t, str) and "{a}" in t for t in templates):
            raise MRLError(
                f"data.templates={templates!r} is invalid; give caption templates with '{{a}}' "
                "(the class name with its article), e.g. 'a photo of {a}.'"
            )
        self.templates = templates
        self.gloss = bool(gloss)
        self.class_names = [n for n, _ in FASHION_SYNSETS]
        self._captions: list[list[str]] | None = None

    def captions(self) -> list[list[str]]:
        """Each class's captions: the filled templates, then (``gloss``) its WordNet gloss."""
        if self._captions is None:
            glosses = (
                fashion_glosses(self.wordnet_root, self.wordnet_cache_dir)
                if self.gloss
                else [None] * 10
            )
            self._captions = [
                fill_templates(n, self.templates) + ([g] if g else [])
                for n, g in zip(self.class_names, glosses, strict=True)
            ]
        return self._captions

    def eval_texts(self, split: str) -> tuple[list[str], np.ndarray]:
        """Every distinct caption once, its group = its class (the same for every split)."""
        caps = self.captions()
        texts = [c for cs in caps for c in cs]
        return texts, np.asarray([k for k, cs in enumerate(caps) for _ in cs], np.int64)

    def class_prompts(self) -> tuple[list[str], np.ndarray]:
        """The zero-shot prompts (the filled templates) and their classes."""
        prompts = [fill_templates(n, self.templates) for n in self.class_names]
        return [p for ps in prompts for p in ps], np.repeat(np.arange(10), len(self.templates))

    def prepare_data(self) -> None:
        super().prepare_data()
        self.captions()

    def _make_datasets(self) -> dict[str, Dataset | None]:
        caps = self.captions()
        out: dict[str, Dataset | None] = {}
        for split, ds in super()._make_datasets().items():
            if ds is None:
                out[split] = None
                continue
            groups = ds.targets.numpy()  # type: ignore[attr-defined]
            out[split] = ImageTextItems(ds, groups, caps if split == "train" else None)
        return out


# ----------------------------------------------------------------------------- CSV / JSONL
def read_pairs(
    path: str | os.PathLike,
    image_column: str = "image",
    caption_column: str = "caption",
    label_column: str | None = "label",
) -> list[tuple[str, str, str | None]]:
    """``(absolute image path, caption, label or None)`` per row of a CSV / JSONL file.

    Every check is a one-line :class:`MRLError`: the file, its columns (the found and the
    expected names), an empty caption (its 1-based row, header not counted) and a missing
    image file (its path).
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise MRLError(f"data.path={str(path)!r} is not a file; give a .csv or .jsonl file")
    jsonl = path.suffix.lower() in (".jsonl", ".ndjson")
    rows: list[dict[str, Any]] = []
    if jsonl:
        with open(path, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except ValueError as e:
                    raise MRLError(f"{path} line {n} is not JSON ({e}); one object per line") from e
                if not isinstance(row, dict):
                    raise MRLError(f"{path} line {n} is not a JSON object; one object per line")
                rows.append(row)
        columns = list(dict.fromkeys(k for r in rows for k in r))
    else:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            columns = list(reader.fieldnames or [])
            rows = list(reader)
    missing = [c for c in (image_column, caption_column) if c not in columns]
    if missing or not rows:
        what = f"no column {missing[0]!r}" if missing else "no rows"
        raise MRLError(
            f"{path} has {what}: found columns {columns}; expected image column "
            f"{image_column!r} and caption column {caption_column!r} (data.image_column, "
            "data.caption_column)"
        )
    use_label = label_column is not None and label_column in columns
    out = []
    for n, row in enumerate(rows, 1):
        image, caption = row.get(image_column), row.get(caption_column)
        if not isinstance(caption, str) or not caption.strip():
            raise MRLError(
                f"{path} row {n}: empty caption (column {caption_column!r}, image {image!r}); "
                "every row needs a non-empty caption"
            )
        if not isinstance(image, str) or not image.strip():
            raise MRLError(f"{path} row {n}: empty image path (column {image_column!r})")
        full = (path.parent / image).resolve() if not Path(image).is_absolute() else Path(image)
        if not full.is_file():
            raise MRLError(
                f"{path} row {n}: image {full} does not exist; paths are relative to {path.parent}"
            )
        label = row.get(label_column) if use_label else None
        out.append((str(full), caption.strip(), None if label in (None, "") else str(label)))
    return out


class _FileImages(Dataset):
    """Images read from files with PIL (``mode`` L or RGB), transformed; labels alongside."""

    def __init__(self, paths: list[str], labels: np.ndarray, mode: str, transform) -> None:
        self.paths, self.labels, self.mode, self.transform = paths, labels, mode, transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        path = self.paths[i]
        try:
            with open(path, "rb") as f:
                img = to_mode(Image.open(f), self.mode)
        except _READ_ERRORS as e:
            raise MRLError(
                f"cannot read image {path} ({type(e).__name__}: {e}); fix or remove its rows"
            ) from e
        return self.transform(img), int(self.labels[i])


class ImageTextDataModule(_ImageTextMixin, MRLDataModule):
    """(image, caption) pairs from a CSV / JSONL file (see the module doc).

    Args:
        path: the training file (CSV with a header row, or ``.jsonl``).
        test_path: the test file (same columns); None: ``test_size`` images of ``path``.
        test_size: held-out test images of ``path`` (a count, or a fraction in (0, 1)).
        image_column, caption_column: column names; label_column: an optional class column.
        img_size: images are resized (shorter side) and centre-cropped to this size.
        in_chans: 3 (RGB) or 1 (greyscale).
        augment: random resized crop (scale 0.5-1) + horizontal flip on the training split.
        templates: zero-shot prompt templates for the label names (``{a}``: with article).
        **common: ``batch_size``, ``val_size`` (images), ``subset``, ``test_subset``, ``seed``,
            ... as :class:`~mrl.data.base.MRLDataModule`.
    """

    name = "image_text"

    def __init__(
        self,
        path: str | os.PathLike,
        test_path: str | os.PathLike | None = None,
        test_size: int | float = 0.1,
        image_column: str = "image",
        caption_column: str = "caption",
        label_column: str | None = "label",
        img_size: int = 224,
        in_chans: int = 3,
        augment: bool = False,
        templates: Sequence[str] | None = None,
        **common: Any,
    ) -> None:
        super().__init__(**common)
        self.path = Path(path).expanduser()
        self.test_path = None if test_path is None else Path(test_path).expanduser()
        if not (
            (isinstance(test_size, int) and test_size >= 0)
            or (isinstance(test_size, float) and 0 < test_size < 1)
        ):
            raise MRLError(
                f"test_size={test_size!r} is invalid; use a count >= 0 or a fraction in (0, 1)"
            )
        self.test_size = test_size
        self.columns = (image_column, caption_column, label_column)
        self.img_size = check_int("img_size", img_size, 1)
        if in_chans not in (1, 3):
            raise MRLError(f"in_chans={in_chans!r} is invalid; use 3 (RGB) or 1 (greyscale)")
        self.in_chans = int(in_chans)
        self.augment = bool(augment)
        self.templates = list(TEMPLATES if templates is None else templates)
        self.num_classes = None  # known once read (label column)
        self._tables: dict[str, dict[str, Any]] = {}
        self._splits: dict[str, tuple[str, np.ndarray]] = {}
        self.class_names: list[str] = []
        self._read_files()

    def _read_files(self) -> None:
        """Read the files now: bad input fails before training, ``num_classes`` is known."""
        rows = {"train": read_pairs(self.path, *self.columns)}
        if self.test_path is not None:
            rows["test"] = read_pairs(self.test_path, *self.columns)
        labels = sorted({r[2] for rs in rows.values() for r in rs if r[2] is not None})
        if labels and any(r[2] is None for rs in rows.values() for r in rs):
            raise MRLError(
                f"column {self.columns[2]!r} is empty in some rows; give every row a label or "
                "set data.label_column=null"
            )
        self.class_names = labels
        self.num_classes = len(labels) if len(labels) >= 2 else None
        index = {name: k for k, name in enumerate(labels)}
        for key, rs in rows.items():
            images = list(dict.fromkeys(r[0] for r in rs))
            row_of = {p: i for i, p in enumerate(images)}
            caps: list[list[str]] = [[] for _ in images]
            lab = np.full(len(images), -1, np.int64)
            for p, c, y in rs:
                caps[row_of[p]].append(c)
                if y is not None and self.num_classes:
                    lab[row_of[p]] = index[y]
            self._tables[key] = {"images": images, "captions": caps, "labels": lab}

    def _load(self) -> None:
        n = len(self._tables["train"]["images"])
        if self.test_path is None:
            n_test = (
                int(round(self.test_size * n))
                if isinstance(self.test_size, float)
                else self.test_size
            )
            if n_test >= n:
                raise MRLError(f"test_size={self.test_size!r} leaves no training images of {n}")
            perm = seeded_permutation(n, self.seed, 5)
            test = take_subset(np.sort(perm[:n_test]), self.test_subset, self.seed, 2)
            rest = np.sort(perm[n_test:])
            test_key = "train"
        else:
            rest = np.arange(n)
            test = self._test_indices(len(self._tables["test"]["images"]))
            test_key = "test"
        tr, va = self._train_val_indices(len(rest))
        self._splits = {
            "train": ("train", rest[tr]),
            "val": ("train", rest[va]),
            "test": (test_key, test),
        }

    def _on_data_config(self, cfg: dict[str, Any]) -> None:
        """Recorded; the size stays ``img_size`` (mean / std / interpolation are used)."""

    def transforms(self) -> tuple[Any, Any]:
        """(train, eval) torchvision transforms at ``img_size``."""
        from torchvision import transforms as T

        cfg = self.data_config or {}
        mean = channel_stats(cfg.get("mean") or IMAGENET_MEAN, self.in_chans, "mean")
        std = channel_stats(cfg.get("std") or IMAGENET_STD, self.in_chans, "std")
        tail = [T.ToTensor(), T.Normalize(mean, std)]
        size = self.img_size
        eval_tf = T.Compose([T.Resize(size), T.CenterCrop(size), *tail])
        if not self.augment:
            return eval_tf, eval_tf
        train_tf = T.Compose(
            [T.RandomResizedCrop(size, scale=(0.5, 1.0)), T.RandomHorizontalFlip(), *tail]
        )
        return train_tf, eval_tf

    def _make_datasets(self) -> dict[str, Dataset | None]:
        train_tf, eval_tf = self.transforms()
        mode = "RGB" if self.in_chans == 3 else "L"

        def make(split: str, transform, train: bool) -> ImageTextItems | None:
            key, idx = self._splits[split]
            if not len(idx):
                return None
            t = self._tables[key]
            images = _FileImages([t["images"][i] for i in idx], t["labels"][idx], mode, transform)
            caps = [t["captions"][i] for i in idx] if train else None
            return ImageTextItems(images, np.arange(len(idx)), caps)

        return {
            "train": make("train", train_tf, True),
            "val": make("val", eval_tf, False),
            "test": make("test", eval_tf, False),
            "train_eval": make("train", eval_tf, False),
        }

    def eval_texts(self, split: str) -> tuple[list[str], np.ndarray]:
        """Every caption of the split's images; group = the image's row in the split."""
        self.setup()
        key, idx = self._splits[split]
        caps = [self._tables[key]["captions"][i] for i in idx]
        return [c for cs in caps for c in cs], np.asarray(
            [k for k, cs in enumerate(caps) for _ in cs], np.int64
        )

    def class_prompts(self) -> tuple[list[str], np.ndarray] | None:
        """Zero-shot prompts of the label names (None without a label column)."""
        if not self.num_classes:
            return None
        prompts = [fill_templates(n, self.templates) for n in self.class_names]
        return [p for ps in prompts for p in ps], np.repeat(
            np.arange(self.num_classes), len(self.templates)
        )
