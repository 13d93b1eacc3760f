"""Input checks shared by the baselines (every failure is a one-line :class:`MRLError`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from mrl.dims import parse_dims
from mrl.errors import MRLError


def to_numpy(x: Any, name: str, dtype: type = np.float32) -> np.ndarray:
    """``x`` (numpy array, torch tensor or nested list) as a numpy array of ``dtype``."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    try:
        return np.asarray(x, dtype=dtype)
    except (TypeError, ValueError) as e:
        raise MRLError(f"{name} of type {type(x).__name__} is not a numeric array: {e}") from e


def as_matrix(x: Any, name: str, dtype: type = np.float32) -> np.ndarray:
    """``x`` as a C-contiguous non-empty 2-D ``(rows, cols)`` array of ``dtype``, finite."""
    x = np.ascontiguousarray(to_numpy(x, name, dtype))
    if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] == 0:
        raise MRLError(f"{name} has shape {x.shape}; expected a non-empty 2-D array (rows, dims)")
    if not np.isfinite(x).all():
        raise MRLError(f"{name} holds NaN or infinite values; expected finite numbers")
    return x


def as_labels(y: Any, n: int, name: str) -> np.ndarray:
    """``y`` as a non-negative int64 vector of length ``n``."""
    if isinstance(y, torch.Tensor):
        y = y.detach().cpu().numpy()
    y = np.asarray(y)
    if y.ndim != 1 or len(y) != n:
        raise MRLError(f"{name} has shape {y.shape}; expected a 1-D vector of {n} labels")
    if not np.issubdtype(y.dtype, np.integer):
        raise MRLError(f"{name} has dtype {y.dtype}; expected integer class labels")
    if n and y.min() < 0:
        raise MRLError(f"{name} has a negative label {y.min()}; labels are 0..C-1")
    return y.astype(np.int64, copy=False)


def as_sizes(sizes: Any, name: str) -> list[int]:
    """Representation sizes ``k``: strictly increasing positive ints (``[8,16,...,2048]`` ok)."""
    if isinstance(sizes, np.ndarray):
        sizes = sizes.tolist()
    elif isinstance(sizes, Sequence) and not isinstance(sizes, str):
        sizes = [int(s) if isinstance(s, np.integer) else s for s in sizes]
    try:
        return parse_dims(sizes)
    except MRLError as e:
        raise MRLError(str(e).replace("mrl.dims=", f"{name}=", 1)) from None
    except TypeError:
        raise MRLError(f"{name}={sizes!r} must be a list of positive integers") from None


def positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise MRLError(f"{name}={value!r} must be a positive integer")
    return int(value)


def seed_int(value: Any, name: str = "seed") -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise MRLError(f"{name}={value!r} must be an integer >= 0")
    return int(value)


def split_sizes(sizes: Sequence[int], limit: int) -> tuple[list[int], list[int]]:
    """``(sizes <= limit, sizes > limit)``: the ones a baseline can produce and the missing."""
    return [k for k in sizes if k <= limit], [k for k in sizes if k > limit]


def missing(sizes: Sequence[int]) -> dict[int, None]:
    """``{k: None}``: sizes a baseline cannot produce (the paper's '-'), never a number."""
    return dict.fromkeys(sizes)


def num_classes_of(*labels: np.ndarray) -> int:
    return int(max(int(y.max()) for y in labels if len(y))) + 1
