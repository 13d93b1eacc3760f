"""Per-prefix accuracy on shifted test sets (``eval=[shift] eval.shift.sets={v2: <root>, ...}``).

Each set is a folder of class subfolders (``root/<class>/*.png``), read with the training data's
*evaluation* preprocessing (:func:`mrl.inference.preprocessing_of`) and embedded by the model
once; the arrays are cached in the run's ``embeddings/`` as ``shift_<name>_{x,y}.npy`` beside
the splits, keyed by the checkpoint, the preprocessing and the folder's file list.

Class folders are matched to the training classes by name (ImageNet-V2/A/R/Sketch use the
same wnid folder names as ImageNet), or, when every folder name is an integer ``0..C-1`` and
none is a class name (ImageNet-V2's ``0``..``999`` layout; Fashion-MNIST, whose class names
hold ``/``), by index. A folder that matches neither is an error naming it.

A set may hold a subset of the classes (ImageNet-A and -R: 200 of 1000). As in their papers'
protocol, predictions are then restricted to the classes present: the head's argmax over those
classes' logits only, and the 1-NN database reduced to the training rows of those classes.

Metrics, fractions in [0, 1], for every evaluated prefix ``m``:

* ``shift/{name}/top1@d{m}``: top-1 of the trained head of prefix ``m`` (trained prefixes only;
  needs a checkpoint);
* ``shift/{name}/1nn@d{m}``: 1-NN accuracy, cosine on the sliced then L2-normalised prefix,
  database = the train split (ties: lowest row id, as :func:`mrl.eval.search.exact_search`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from mrl.core.errors import MRLError
from mrl.eval.registry import EvalData, Evaluator

log = logging.getLogger(__name__)


def class_mapping(folders: Sequence[str], classes: Sequence[str], root: Path) -> dict[str, int]:
    """``{folder name: training class index}`` for the class folders of one shift set."""
    if not folders:
        raise MRLError(f"shift set {root} has no class subfolders; expected {root}/<class>/")
    by_name = {str(c): i for i, c in enumerate(classes)}
    if all(f in by_name for f in folders):
        return {f: by_name[f] for f in folders}
    numeric = all(f.isdigit() and int(f) < len(classes) for f in folders)
    if numeric and not any(f in by_name for f in folders):
        return {f: int(f) for f in folders}
    bad = [f for f in folders if f not in by_name]
    if all(f.isdigit() for f in folders):  # numbered folders: name the out-of-range ones
        bad = [f for f in folders if int(f) >= len(classes)] or bad
    bad = bad[:3]
    shown = ", ".join(repr(c) for c in list(classes)[:3])
    raise MRLError(
        f"shift set {root}: class folder(s) {bad} match no training class; name folders after "
        f"the training classes ({shown}, ...) or number them 0..{len(classes) - 1}"
    )


class _ShiftImages(Dataset):
    """``(preprocessed image, training class)`` of one shift folder."""

    def __init__(self, samples: list[tuple[str, int]], spec: Mapping[str, Any]) -> None:
        from mrl.inference import Preprocessor

        self.samples = samples
        self.pre = Preprocessor(spec)
        self.mode = "L" if self.pre.channels == 1 else "RGB"

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        from mrl.data.imagefolder import _READ_ERRORS, to_mode

        path, target = self.samples[i]
        try:
            with open(path, "rb") as f:
                img = to_mode(Image.open(f), self.mode)
        except _READ_ERRORS as e:
            raise MRLError(f"cannot read image {path} ({type(e).__name__}: {e})") from e
        return self.pre([img])[0], target


def list_shift_set(root: str | Path, classes: Sequence[str]) -> list[tuple[str, int]]:
    """``(path, training class)`` of every image of a shift folder, in ImageFolder order."""
    from mrl.data.imagefolder import _class_dirs, _list_images

    path = Path(str(root)).expanduser()
    if not path.is_dir():
        raise MRLError(f"shift set root={str(root)!r} is not a folder; give <root>/<class>/*.png")
    mapping = class_mapping(_class_dirs(path), classes, path)
    samples = _list_images(path, mapping, path, set())
    if not samples:
        raise MRLError(f"shift set {path} has class folders but no images")
    return samples


def _fingerprint(samples: list[tuple[str, int]]) -> str:
    h = hashlib.sha256()
    for p, y in samples:
        st = Path(p).stat()
        h.update(f"{p}\0{y}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


def embed_shift_sets(
    module: Any,
    dm: Any,
    sets: Mapping[str, str],
    device: str | torch.device = "cpu",
    cache: Path | None = None,
    batch_size: int = 256,
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{name: (x, y)}``: full-width embeddings (not normalised) and training-class labels.

    Reuses ``cache/shift_<name>_{x,y}.npy`` when ``cache/shift_<name>.json`` records the same
    checkpoint fingerprint, preprocessing and file list; writes them otherwise.
    """
    from mrl.eval.cache import embed_loader
    from mrl.inference import preprocessing_of
    from mrl.run.files import write_json_atomic

    spec = preprocessing_of(dm)
    classes = [str(c) for c in dm.classes]
    out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for name, root in sets.items():
        samples = list_shift_set(root, classes)
        key = {
            "root": str(root),
            "files": _fingerprint(samples),
            "preprocessing": json.loads(json.dumps(spec, default=str)),
            "model": _module_fingerprint(module),
        }
        files = None
        if cache is not None:
            files = [cache / f"shift_{name}_{s}.npy" for s in ("x", "y")] + [
                cache / f"shift_{name}.json"
            ]
            if all(f.is_file() for f in files) and json.loads(files[2].read_text()) == key:
                out[name] = (np.load(files[0], mmap_mode="r"), np.load(files[1]))
                log.info("shift set %s: reused %s", name, files[0])
                continue
        t = time.time()
        loader = DataLoader(_ShiftImages(samples, spec), batch_size=batch_size)
        x, y = embed_loader(module, loader, torch.device(device))
        log.info("embedded shift set %s: %s in %.1fs", name, x.shape, time.time() - t)
        if files is not None:
            files[0].parent.mkdir(parents=True, exist_ok=True)
            np.save(files[0], x)
            np.save(files[1], y)
            write_json_atomic(files[2], key)
        out[name] = (x, y)
    return out


def _module_fingerprint(module: Any) -> str:
    """sha256 of the model's parameters and buffers (identifies the weights embedded with)."""
    h = hashlib.sha256()
    for k, v in sorted(module.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def check_sets(sets: Any) -> dict[str, str]:
    """``eval.shift.sets`` as ``{name: root}``; a one-line error for anything else."""
    if not sets or not hasattr(sets, "items"):
        raise MRLError(
            f"eval.shift.sets={sets!r} must map names to folders, e.g. "
            "'eval.shift.sets={v2: /data/imagenetv2, sketch: /data/imagenet-sketch}'"
        )
    out = {}
    for name, root in sets.items():
        if not str(name).replace("-", "").replace("_", "").isalnum():
            raise MRLError(
                f"eval.shift.sets name {name!r} is invalid; use letters, digits, '-' or '_'"
            )
        out[str(name)] = str(root)
    return out


def shift_metrics(
    train_x: np.ndarray,
    train_y: np.ndarray,
    x: np.ndarray,
    y: np.ndarray,
    dims: Sequence[int],
    logits: Mapping[int, np.ndarray] | None,
    name: str,
) -> dict[str, float]:
    """The metrics of one set (module doc): 1-NN and, with ``logits``, the heads' top-1,
    both restricted to the classes present in ``y``."""
    from mrl.eval.search import prefix_neighbors

    present = np.unique(y)
    rows = np.flatnonzero(np.isin(train_y, present))
    out: dict[str, float] = {}
    if len(rows) == 0:
        raise MRLError(f"shift set {name}: no training rows of its classes {present[:5]}")
    db, db_y = np.asarray(train_x)[rows], np.asarray(train_y)[rows]
    for m, (_, ids) in prefix_neighbors(db, np.asarray(x), list(dims), k=1).items():
        out[f"shift/{name}/1nn@d{m}"] = float(np.mean(db_y[ids[:, 0]] == y))
    for m, lg in (logits or {}).items():
        if m in dims:
            pred = present[np.asarray(lg)[:, present].argmax(1)]
            out[f"shift/{name}/top1@d{m}"] = float(np.mean(pred == y))
    return out


class Shift(Evaluator):
    """``shift/{name}/{top1,1nn}@d{m}`` on each shifted test set (module doc).

    Needs the model (it embeds the sets): :meth:`prepare` is called with the module and the
    data module before the evaluators run; from bare embeddings it is refused."""

    main_metric = None
    needs_model = True

    def __init__(self, sets: Mapping[str, str] | None = None, batch_size: int = 256) -> None:
        self.sets = check_sets(sets)
        self.batch_size = int(batch_size)
        self.arrays: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self.module: Any = None

    def prepare(self, module: Any, dm: Any, device: Any, cache: Path | None) -> None:
        self.module = module
        self.arrays = embed_shift_sets(module, dm, self.sets, device, cache, self.batch_size)

    def main_metrics(self, metrics: Mapping[str, float]) -> list[str]:
        names = [f"shift/{n}/{k}" for n in self.sets for k in ("top1", "1nn")]
        return [n for n in names if any(key.startswith(n + "@") for key in metrics)]

    def __call__(self, data: EvalData, dims: Sequence[int]) -> dict[str, float]:
        if not self.arrays:
            raise MRLError("eval=[shift] needs a checkpoint (ckpt_path=...) to embed its sets")
        out: dict[str, float] = {}
        for name, (x, y) in self.arrays.items():
            logits = data.heads(np.asarray(x)) if data.heads is not None else None
            out |= shift_metrics(data.train_x, data.train_y, x, y, dims, logits, name)
        return out
