"""The embedding cache: one embedding pass per split, stored as plain ``.npy`` files.

Layout of ``<run dir>/embeddings/``: ``{train,val,test}_{x,y}.npy`` (``x``: full width,
float32, *not* normalised; ``y``: int64 labels; ``val`` absent when the data has no
validation split) and ``meta.json`` (the checkpoint and transform that produced them). The
``.npy`` files are memory-mapped on read (copy-on-write: nothing is written back), so a
million-vector cache costs no RAM up front. ``embeddings=<file>.npz`` (the same keys) is
read too, into memory.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mrl.core.errors import MRLError
from mrl.run import distributed
from mrl.run.files import write_json_atomic

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
REQUIRED = ("train_x", "train_y", "test_x", "test_y")
META = "meta.json"


def file_fingerprint(path: str | Path) -> str:
    """sha256 of a file's first and last MiB plus its size (fast for big checkpoints)."""
    path = Path(path)
    size = path.stat().st_size
    h = hashlib.sha256(str(size).encode())
    with open(path, "rb") as f:
        h.update(f.read(1 << 20))
        f.seek(max(0, size - (1 << 20)))
        h.update(f.read(1 << 20))
    return h.hexdigest()[:16]


@torch.no_grad()
def embed_loader(module: Any, loader, device: torch.device) -> tuple[np.ndarray, np.ndarray]:
    """Full-width embeddings (float32, not normalised) and int64 labels of one loader.

    Under DDP (a loader sharded by :func:`mrl.run.distributed.shard_sampler`) every rank
    embeds its shard and rank 0 receives the whole split in dataset order; the other ranks
    get empty arrays.
    """
    was_training = module.training
    module.eval().to(device)
    xs, ys = [], []
    for x, y in loader:
        xs.append(module.embed(x.to(device, non_blocking=True)).float().cpu())
        ys.append(y.cpu())
    module.train(was_training)
    if not xs and distributed.world_size() == 1:
        raise MRLError("a data split is empty: no embeddings to evaluate")
    width = int(xs[0].shape[1]) if xs else 0
    x_np = torch.cat(xs).numpy() if xs else np.zeros((0, width), np.float32)
    y_np = torch.cat(ys).numpy().astype(np.int64) if ys else np.zeros(0, np.int64)
    total = len(loader.dataset)
    full = distributed.gather_shards(
        {"x": x_np, "y": y_np}, distributed.shard_indices(loader.sampler, total), total
    )
    if full is None:  # not rank 0
        return np.zeros((0, width), np.float32), np.zeros(0, np.int64)
    return full["x"], full["y"]


def compute_embeddings(module: Any, dm: Any, device: str | torch.device = "cpu"):
    """One pass per split: ``{train,val,test}_{x,y}`` (val absent when the split is empty).

    Under DDP every rank embeds its shard with rank 0's weights (BatchNorm statistics
    included); the arrays are complete on rank 0 only.
    """
    device = torch.device(device)
    distributed.sync_from_main(module)  # every rank embeds with rank 0's weights
    dm.setup("fit")
    dm.setup("test")
    loaders = {"train": dm.train_eval_dataloader(), "test": dm.test_dataloader()}
    val = dm.val_dataloader()
    if val:
        loaders["val"] = val
    out: dict[str, np.ndarray] = {}
    for split, loader in loaders.items():
        t = time.time()
        out[f"{split}_x"], out[f"{split}_y"] = embed_loader(module, loader, device)
        log.info("embedded %s: %s in %.1fs", split, out[f"{split}_x"].shape, time.time() - t)
    return out


def save_embeddings(folder: Path, arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any]):
    """Write the cache folder atomically: a temporary sibling, then one rename."""
    folder = Path(folder)
    tmp = folder.with_name(f".{folder.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name, arr in arrays.items():
        np.save(tmp / f"{name}.npy", np.ascontiguousarray(arr))
    write_json_atomic(tmp / META, dict(meta))
    old = folder.with_name(f".{folder.name}.old")
    if folder.exists():
        shutil.rmtree(old, ignore_errors=True)
        folder.rename(old)
    tmp.rename(folder)
    shutil.rmtree(old, ignore_errors=True)
    return folder


def load_embeddings(path: str | Path, mmap: bool = True) -> dict[str, np.ndarray]:
    """Read a cache folder (``.npy`` files, memory-mapped when ``mmap``) or an ``.npz`` file.

    Never unpickles (``allow_pickle=False``); the arrays ``train_x, train_y, test_x, test_y``
    are required.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise MRLError(
            f"embeddings {path} does not exist; give a cache folder written by eval.py "
            "(<run dir>/embeddings) or an .npz with train_x, train_y, test_x, test_y"
        )
    try:
        if path.is_dir():
            arrays = {
                f.stem: np.load(f, mmap_mode="c" if mmap else None, allow_pickle=False)
                for f in sorted(path.glob("*.npy"))
            }
        else:
            with np.load(path, allow_pickle=False) as f:
                arrays = {k: f[k] for k in f.files}
    except Exception as e:  # noqa: BLE001 - corrupt file, pickled objects
        raise MRLError(f"embeddings {path} are unreadable: {' '.join(str(e).split())}") from e
    missing = [k for k in REQUIRED if k not in arrays]
    if missing:
        raise MRLError(f"embeddings {path} lack array {missing[0]!r}; they have {sorted(arrays)}")
    return arrays


def cached_embeddings(
    module: Any, dm: Any, folder: Path, meta: Mapping[str, Any], device, use_cache: bool
) -> tuple[dict[str, np.ndarray], bool]:
    """Reuse ``folder`` when its ``meta.json`` equals ``meta`` (same checkpoint and data),
    else embed every split and write it. Returns ``(arrays, reused)``.

    Under DDP rank 0 decides (and alone writes); the arrays are empty on the other ranks.
    """
    side = Path(folder) / META
    same = False
    if use_cache and side.is_file() and distributed.is_main():
        try:
            same = json.loads(side.read_text()) == json.loads(json.dumps(dict(meta)))
        except ValueError:
            same = False
    if distributed.broadcast(same):
        log.info("reusing %s", folder)
        return (load_embeddings(folder) if distributed.is_main() else {}), True
    arrays = compute_embeddings(module, dm, device)
    if distributed.is_main():
        save_embeddings(folder, arrays, meta)
    return arrays, False
