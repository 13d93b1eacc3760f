"""The embedding cache: one embedding pass per split, stored as plain ``.npy`` files.

Layout of ``<run dir>/embeddings/``: ``{train,val,test}_{x,y}.npy`` (``x``: full width,
float32, *not* normalised; ``y``: int64 labels; ``val`` absent when the data has no
validation split) and ``meta.json`` (the checkpoint and transform that produced them). The
``.npy`` files are memory-mapped on read (copy-on-write: nothing is written back), so a
million-vector cache costs no RAM up front.

Bring your own embeddings (:func:`load_embeddings`, ``eval.py embeddings=...``); the arrays
are always ``{train,test}_{x,y}`` (+ optional ``val_{x,y}``), ``x`` ``(rows, width)`` floats,
``y`` integer class labels ``0..C-1``:

* a folder of ``<name>.npy`` files (this cache's layout), memory-mapped;
* a prefix ``<dir>/<p>`` of files ``<p>_train_x.npy``, ``<p>_train_y.npy``, ``<p>_test_x.npy``,
  ``<p>_test_y.npy`` (``<p>_val_*.npy`` optional), memory-mapped;
* an ``.npz`` holding those keys, or others named by a key map
  (``keys={train_x: emb_train, ...}``: our name -> the file's), read into memory;
* a ``.parquet`` table, one row per item: a column ``embedding`` (list or fixed-size list
  of floats, one length), ``label`` (integers) and ``split`` (``train`` / ``val`` /
  ``test``); other column names via ``keys={x: ..., y: ..., split: ...}``. Read by pyarrow
  (memory-mapped file, decoded into memory).

From the command line the key map rides with the path:
``embeddings={path: e.npz, keys: {train_x: a, train_y: b, test_x: c, test_y: d}}``.
Every array set is checked on read (:func:`mrl.eval._checks.embedding_arrays`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mrl.core.errors import MRLError
from mrl.eval._checks import embedding_arrays
from mrl.run import distributed
from mrl.run.files import write_json_atomic

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
REQUIRED = ("train_x", "train_y", "test_x", "test_y")
ARRAYS = ("train_x", "train_y", "val_x", "val_y", "test_x", "test_y")
#: parquet columns: ours -> the default column name
PARQUET_COLUMNS = {"x": "embedding", "y": "label", "split": "split"}
PARQUET_SUFFIXES = (".parquet", ".pq")
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


def _key_map(keys: Mapping[str, Any] | None, valid: Sequence[str], path: Path) -> dict[str, str]:
    """``{our name: the file's name}`` for every name in ``valid`` (identity by default)."""
    keys = dict(keys or {})
    bad = [k for k in keys if k not in valid]
    if bad:
        raise MRLError(
            f"embeddings {path}: keys has {bad[0]!r}; name some of {list(valid)} "
            "(our name -> the name in the file)"
        )
    return {k: str(keys.get(k, k)) for k in valid}


def _npy_prefix(path: Path) -> Path | None:
    """``path`` if ``<path>_train_x.npy`` exists (the ``<prefix>_<name>.npy`` layout)."""
    return path if path.with_name(f"{path.name}_train_x.npy").is_file() else None


def _read_npy(files: Mapping[str, Path], mmap: bool) -> dict[str, np.ndarray]:
    return {
        k: np.load(f, mmap_mode="c" if mmap else None, allow_pickle=False)
        for k, f in files.items()
        if f.is_file()
    }


def _read_parquet(path: Path, keys: Mapping[str, Any] | None) -> dict[str, np.ndarray]:
    """``{split}_{x,y}`` from a table with an embedding, a label and a split column."""
    try:
        import pyarrow as pa
        import pyarrow.compute as pc
        import pyarrow.parquet as pq
    except ImportError:
        raise MRLError(
            f"embeddings {path}: reading .parquet needs pyarrow (pip install pyarrow)"
        ) from None

    cols = {k: str(v) for k, v in ({**PARQUET_COLUMNS, **dict(keys or {})}).items()}
    _key_map(keys, list(PARQUET_COLUMNS), path)
    have = pq.read_schema(path).names
    for ours, name in cols.items():
        if name not in have:
            raise MRLError(
                f"embeddings {path} have no column {name!r} (the {ours} column); they have "
                f"{have}; name it with keys={{{ours}: <column>}}"
            )
    table = pq.read_table(path, columns=list(cols.values()), memory_map=True)
    emb = table.column(cols["x"]).combine_chunks()
    if not (pa.types.is_list(emb.type) or pa.types.is_large_list(emb.type)) and not (
        pa.types.is_fixed_size_list(emb.type)
    ):
        raise MRLError(
            f"embeddings {path}: column {cols['x']!r} has type {emb.type}; expected a list of "
            "floats per row"
        )
    for name, col in ((cols["x"], emb), (cols["y"], table.column(cols["y"]))):
        if col.null_count:
            raise MRLError(f"embeddings {path}: column {name!r} has {col.null_count} null rows")
    n = len(emb)
    if pa.types.is_fixed_size_list(emb.type):
        width = emb.type.list_size
    else:
        lengths = pc.list_value_length(emb).to_numpy(zero_copy_only=False)
        width = int(lengths[0]) if n else 0
        odd = np.flatnonzero(lengths != width)
        if len(odd):
            raise MRLError(
                f"embeddings {path}: row {odd[0]} of column {cols['x']!r} has "
                f"{lengths[odd[0]]} values, row 0 has {width}; every row needs the same width"
            )
    if not pa.types.is_floating(emb.type.value_type) and not pa.types.is_integer(
        emb.type.value_type
    ):
        raise MRLError(
            f"embeddings {path}: column {cols['x']!r} holds {emb.type.value_type}; expected floats"
        )
    x = emb.flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
    x = x.reshape(n, width)
    y = table.column(cols["y"]).to_numpy()
    split = table.column(cols["split"]).combine_chunks().cast(pa.string())
    values = pc.unique(split).to_pylist()
    unknown = [v for v in values if v not in SPLITS]
    if unknown:
        raise MRLError(
            f"embeddings {path}: column {cols['split']!r} has {unknown[0]!r}; use {list(SPLITS)}"
        )
    out: dict[str, np.ndarray] = {}
    for s in SPLITS:
        mask = pc.equal(split, s).to_numpy(zero_copy_only=False)
        if s in values:
            out[f"{s}_x"], out[f"{s}_y"] = x[mask], y[mask]
    return out


def load_embeddings(
    path: str | Path | Mapping[str, Any],
    mmap: bool = True,
    keys: Mapping[str, Any] | None = None,
) -> dict[str, np.ndarray]:
    """Read embeddings in any layout of the module docstring; check them; return the arrays.

    ``path`` may also be ``{path: ..., keys: {...}}`` (the command line's form). ``.npy``
    files are memory-mapped when ``mmap``. Never unpickles (``allow_pickle=False``); the
    arrays ``train_x, train_y, test_x, test_y`` are required.
    """
    if isinstance(path, Mapping):
        spec = dict(path)
        unknown = sorted(set(spec) - {"path", "keys"})
        if unknown or "path" not in spec:
            raise MRLError(
                f"embeddings={spec}: give a path, or {{path: <file>, keys: {{...}}}} "
                f"(unexpected {unknown or ['no path']})"
            )
        path, keys = spec["path"], {**dict(spec.get("keys") or {}), **dict(keys or {})}
    path = Path(str(path)).expanduser()
    prefix = None if path.exists() else _npy_prefix(path)
    if not path.exists() and prefix is None:
        raise MRLError(
            f"embeddings {path} does not exist; give a cache folder written by eval.py "
            "(<run dir>/embeddings), a folder or <prefix> of train_x.npy, train_y.npy, "
            "test_x.npy, test_y.npy files, an .npz with those arrays or a .parquet"
        )
    try:
        if prefix is not None:
            names = _key_map(keys, ARRAYS, path)
            arrays = _read_npy(
                {k: path.with_name(f"{path.name}_{v}.npy") for k, v in names.items()}, mmap
            )
        elif path.is_dir():
            if keys:
                names = _key_map(keys, ARRAYS, path)
                arrays = _read_npy({k: path / f"{v}.npy" for k, v in names.items()}, mmap)
            else:
                arrays = _read_npy({f.stem: f for f in sorted(path.glob("*.npy"))}, mmap)
        elif path.suffix.lower() in PARQUET_SUFFIXES:
            arrays = _read_parquet(path, keys)
        else:
            names = _key_map(keys, ARRAYS, path)
            with np.load(path, allow_pickle=False) as f:
                if not hasattr(f, "files"):
                    raise MRLError(
                        f"embeddings {path} is a single array; give an .npz, a .parquet or "
                        "a folder / <prefix> of train_x.npy, train_y.npy, test_x.npy, test_y.npy"
                    )
                arrays = {k: f[v] for k, v in names.items() if v in f.files}
                if not keys:
                    arrays |= {k: f[k] for k in f.files if k not in arrays}
    except MRLError:
        raise
    except Exception as e:  # noqa: BLE001 - corrupt file, pickled objects
        raise MRLError(f"embeddings {path} are unreadable: {' '.join(str(e).split())}") from e
    missing = [k for k in REQUIRED if k not in arrays]
    if missing:
        mapped = dict(keys or {}).get(missing[0])
        raise MRLError(
            f"embeddings {path} lack array {missing[0]!r}"
            + (f" (keys maps it to {mapped!r})" if mapped else "")
            + f"; they have {sorted(arrays)}"
        )
    embedding_arrays(arrays, where=f"embeddings {path}")
    return arrays


#: in a training run dir: the eval caches made from its checkpoints (``{"caches": [folder]}``)
CACHE_INDEX = "embedding_caches.json"


def _same_meta(folder: Path, meta: Mapping[str, Any]) -> bool:
    try:
        return json.loads((Path(folder) / META).read_text()) == json.loads(json.dumps(dict(meta)))
    except (OSError, ValueError):
        return False


def _cache_index(meta: Mapping[str, Any]) -> Path | None:
    """The index file of the training run dir of ``meta["ckpt"]`` (None without one)."""
    from mrl.run.layout import run_dir_of

    ckpt = meta.get("ckpt")
    run = run_dir_of(ckpt) if ckpt and Path(str(ckpt)).exists() else None
    return None if run is None else run.path / CACHE_INDEX


def known_caches(meta: Mapping[str, Any]) -> list[Path]:
    """Cache folders that may hold the embeddings of ``meta["ckpt"]``: its training run
    dir's ``embeddings/`` and the eval caches listed in that dir's ``embedding_caches.json``
    (newest first)."""
    index = _cache_index(meta)
    if index is None:
        return []
    listed = [Path(f) for f in reversed(_read_index(index))]
    return [index.parent / "embeddings", *listed]


def _read_index(index: Path) -> list[str]:
    try:
        return [str(f) for f in json.loads(index.read_text()).get("caches", [])]
    except (OSError, ValueError, AttributeError):
        return []


def remember_cache(folder: Path, meta: Mapping[str, Any], keep: int = 50) -> None:
    """List ``folder`` in the checkpoint's training run dir (:data:`CACHE_INDEX`), so a later
    ``eval.py`` of the same checkpoint into another run dir finds it; missing folders are
    dropped. Best effort: an unwritable run dir only loses the shortcut."""
    index = _cache_index(meta)
    if index is None:
        return
    folder = str(Path(folder).resolve())
    caches = [f for f in _read_index(index) if f != folder and (Path(f) / META).is_file()]
    try:
        write_json_atomic(index, {"caches": [*caches, folder][-keep:]})
    except OSError as e:
        log.warning("could not list %s in %s: %s", folder, index, e)


def _link_cache(source: Path, folder: Path) -> Path:
    """``folder`` as hard links to ``source``'s files (no copy); ``source`` itself when the
    file system refuses links."""
    folder = Path(folder)
    tmp = folder.with_name(f".{folder.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
        for f in Path(source).iterdir():
            if f.is_file():
                os.link(f, tmp / f.name)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        log.info("cannot link %s into %s (%s): reading it in place", source, folder, e)
        return Path(source)
    if folder.exists():
        shutil.rmtree(folder)
    tmp.rename(folder)
    return folder


def cached_embeddings(
    module: Any, dm: Any, folder: Path, meta: Mapping[str, Any], device, use_cache: bool
) -> tuple[dict[str, np.ndarray], bool]:
    """Reuse ``folder`` when its ``meta.json`` equals ``meta`` (same checkpoint, data and
    transform), else another cache of the same checkpoint (:func:`known_caches`, hard-linked
    into ``folder``), else embed every split and write it. Returns ``(arrays, reused)``.

    Under DDP rank 0 decides (and alone writes); the arrays are empty on the other ranks.
    """
    source: Path | None = None
    if use_cache and distributed.is_main():
        for cand in [Path(folder), *known_caches(meta)]:
            if _same_meta(cand, meta):
                source = cand
                break
    if distributed.broadcast(source is not None):
        if not distributed.is_main():
            return {}, True
        if source.resolve() != Path(folder).resolve():
            log.info("reusing the embeddings of %s (same checkpoint, data and transform)", source)
            print(f"embeddings: reusing {source} (same checkpoint, data and transform)")
            source = _link_cache(source, folder)
        else:
            log.info("reusing %s", folder)
        remember_cache(source, meta)
        return load_embeddings(source), True
    arrays = compute_embeddings(module, dm, device)
    if distributed.is_main():
        save_embeddings(folder, arrays, meta)
        remember_cache(folder, meta)
    return arrays, False
