"""Small input checks shared by the evaluators (every failure is a one-line MRLError)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from mrl.errors import MRLError


def as_matrix(x: np.ndarray, name: str) -> np.ndarray:
    """``x`` as a C-contiguous float32 ``(n, d)`` array."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] == 0:
        raise MRLError(f"{name} has shape {x.shape}; expected a non-empty 2-D array (items, dims)")
    return x


def as_labels(y: np.ndarray, n: int, name: str, num_classes: int | None = None) -> np.ndarray:
    """``y`` as an int64 vector of length ``n`` (in ``0..num_classes-1`` when given)."""
    y = np.asarray(y)
    if y.ndim != 1 or len(y) != n:
        raise MRLError(f"{name} has shape {y.shape}; expected a 1-D vector of {n} labels")
    if not np.issubdtype(y.dtype, np.integer):
        raise MRLError(f"{name} has dtype {y.dtype}; expected integer class labels")
    y = y.astype(np.int64, copy=False)
    if num_classes is not None and n and (y.min() < 0 or y.max() >= num_classes):
        raise MRLError(
            f"{name} has labels in [{y.min()}, {y.max()}]; with num_classes={num_classes} "
            f"they must lie in 0..{num_classes - 1}"
        )
    return y


def positive_int(value: int, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise MRLError(f"{name}={value!r} must be a positive integer")
    return int(value)


def prefix_dims(dims: Sequence[int], width: int) -> list[int]:
    """Validated, sorted prefix sizes, each in ``1..width``."""
    from mrl.dims import parse_dims

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
