"""Input checks specific to the evaluators (every failure is a one-line MRLError).

The generic validators (integers, matrices, labels) live in :mod:`mrl.core.validate`.
"""

from __future__ import annotations

import weakref
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from mrl.core import validate
from mrl.core.dims import parse_dims
from mrl.core.errors import MRLError


def prefix_dims(dims: Sequence[int], width: int) -> list[int]:
    """Validated, sorted prefix sizes, each in ``1..width``."""
    out = parse_dims(list(dims))
    if out[-1] > width:
        raise MRLError(f"dims={out}: {out[-1]} exceeds the embedding width {width}")
    return out


def neighbours_k(neighbors: dict, k: int, who: str) -> int:
    """The number of neighbours stored per query; raise if it is below ``k``."""
    if not neighbors:
        raise MRLError(f"{who}: neighbors is empty; pass prefix_neighbors(...) output")
    have = min(idx.shape[1] for _, idx in neighbors.values())
    if k > have:
        raise MRLError(
            f"{who}: k={k} exceeds the {have} neighbours stored per query; "
            f"search with k >= {k} or use k <= {have}"
        )
    return have


#: the most classes bare embeddings may imply: labels are class indices ``0..C-1`` and the
#: evaluators allocate per-class arrays (a label of 1e9 would ask for terabytes)
MAX_CLASSES = 100_000
#: arrays already found finite (``id -> array``; an entry dies with its array)
_FINITE: weakref.WeakValueDictionary = weakref.WeakValueDictionary()


def _finite(x: np.ndarray, name: str) -> None:
    if _FINITE.get(id(x)) is x:
        return
    row = validate.first_non_finite_row(x)
    if row is not None:
        raise MRLError(
            f"{name} holds NaN or infinite values (first at row {row}); expected finite numbers"
        )
    try:
        _FINITE[id(x)] = x
    except TypeError:  # not weak-referenceable: check again next time
        pass


def embedding_arrays(
    arrays: Mapping[str, Any], num_classes: int | None = None, where: str = "embeddings"
) -> int:
    """Check one embedding pass ``{train,val,test}_{x,y}`` before any evaluator reads it.

    ``*_x``: numeric ``(rows, width)`` arrays with at least one row, one width for every
    split, finite (the first NaN/inf row is named); ``*_y``: integer vectors, one label per
    row, in ``0..C-1`` where ``C = num_classes`` if given, else the largest label + 1 (at
    most :data:`MAX_CLASSES`). ``val_*`` are optional (both or neither). Each failure is a
    one-line MRLError naming the array. Returns ``C``.
    """
    width = None
    hi = -1
    for split in ("train", "val", "test"):
        xn, yn = f"{split}_x", f"{split}_y"
        x, y = arrays.get(xn), arrays.get(yn)
        if split == "val" and x is None and y is None:
            continue
        for name, a in ((xn, x), (yn, y)):
            if a is None:
                raise MRLError(f"{where} lack array {name!r}; they have {sorted(arrays)}")
        x = x if isinstance(x, np.ndarray) else validate.to_numpy(x, xn, None)
        y = y if isinstance(y, np.ndarray) else validate.to_numpy(y, yn, None)
        if x.dtype == bool or not np.issubdtype(x.dtype, np.number) or x.dtype.kind == "c":
            raise MRLError(f"{xn} has dtype {x.dtype}; expected real-valued (float) embeddings")
        if x.ndim != 2:
            raise MRLError(f"{xn} has shape {x.shape}; expected a 2-D array (rows, width)")
        if x.shape[0] == 0 or x.shape[1] == 0:
            raise MRLError(
                f"{xn} has shape {x.shape}; the {split} split needs at least one embedding "
                "of width >= 1"
            )
        if width is None:
            width = x.shape[1]
        elif x.shape[1] != width:
            raise MRLError(f"{xn} has width {x.shape[1]} but train_x has width {width}")
        if y.ndim != 1:
            raise MRLError(f"{yn} has shape {y.shape}; expected a 1-D vector of {len(x)} labels")
        if len(y) != len(x):
            raise MRLError(f"{yn} has {len(y)} labels but {xn} has {len(x)} rows; give one per row")
        if y.dtype == bool or not np.issubdtype(y.dtype, np.integer):
            raise MRLError(
                f"{yn} has dtype {y.dtype}; expected integer class labels 0..C-1 "
                "(map other labels first, e.g. np.unique(y, return_inverse=True)[1])"
            )
        lo, top = int(y.min()), int(y.max())
        if lo < 0:
            raise MRLError(f"{yn} has a negative label {lo}; labels are class indices 0..C-1")
        if num_classes is not None and top >= num_classes:
            raise MRLError(
                f"{yn} has label {top}; with num_classes={num_classes} labels must lie in "
                f"0..{num_classes - 1}"
            )
        if num_classes is None and top >= MAX_CLASSES:
            raise MRLError(
                f"{yn} has label {top}; labels must be class indices 0..C-1 with C <= "
                f"{MAX_CLASSES} (renumber them, e.g. np.unique(y, return_inverse=True)[1])"
            )
        hi = max(hi, top)
        _finite(x, xn)
    return int(num_classes) if num_classes is not None else hi + 1
