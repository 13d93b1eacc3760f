"""Small input validators shared by the whole package.

Every failure is an :class:`~mrl.core.errors.MRLError` with a one-line message that names the bad
value and says what would be valid, e.g. ``k=0 must be a positive integer``.

Integers: a Python ``int`` or a numpy integer, never a ``bool`` (``True`` is an ``int`` to
Python but never a count, size or seed here); validators return a plain ``int``.

Arrays: numpy arrays, torch tensors (converted on the CPU; torch is not imported here) or
nested lists; matrices are C-contiguous, non-empty, 2-D and finite.

This module imports only the standard library, numpy and :mod:`mrl.core.errors` (plus
:mod:`mrl.core.dims` inside :func:`as_sizes`, which itself uses these validators).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

import numpy as np

from mrl.core.errors import MRLError

__all__ = [
    "as_labels",
    "as_matrix",
    "as_sizes",
    "first_non_finite_row",
    "integer",
    "is_int",
    "is_number",
    "number",
    "positive_int",
    "seed_int",
    "to_numpy",
]

#: elements scanned per block when locating a non-finite row (bounds the temporary mask)
_SCAN_ELEMENTS = 1 << 20


def is_int(value: Any) -> bool:
    """True for an ``int`` or numpy integer that is not a ``bool``."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    """True for a real number (``int``, ``float``, numpy integer or floating) that is not a bool."""
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


def _int_range(min: int | None, max: int | None) -> str:
    if min is not None and max is not None:
        return f"an integer in {min}..{max}"
    if min == 1:
        return "a positive integer"
    if min is not None:
        return f"an integer >= {min}"
    if max is not None:
        return f"an integer <= {max}"
    return "an integer"


def integer(
    value: Any,
    name: str,
    *,
    min: int | None = None,
    max: int | None = None,
    hint: str | None = None,
) -> int:
    """``value`` as an ``int`` within ``min..max`` (inclusive bounds, each optional).

    Rejects bools, floats (``2.0`` too) and strings. The message reads
    ``"{name}={value!r} must be an integer in {min}..{max}"`` (``a positive integer`` for
    ``min=1`` alone, ``an integer >= {min}`` / ``<= {max}`` for one bound), followed by
    ``hint`` when given (e.g. ``"(the width)"``).
    """
    if not is_int(value) or (min is not None and value < min) or (max is not None and value > max):
        tail = f" {hint}" if hint else ""
        raise MRLError(f"{name}={value!r} must be {_int_range(min, max)}{tail}")
    return int(value)


def number(value: Any, name: str, *, positive: bool = False) -> float:
    """``value`` as a finite ``float >= 0`` (``> 0`` with ``positive``).

    Rejects bools, strings, NaN and infinities: ``"{name}={value!r} must be a finite number
    >= 0"``, or ``"... must be a positive number"`` with ``positive``.
    """
    ok = is_number(value) and np.isfinite(float(value)) and float(value) >= 0
    if not ok or (positive and float(value) == 0):
        raise MRLError(
            f"{name}={value!r} must be "
            + ("a positive number" if positive else "a finite number >= 0")
        )
    return float(value)


def positive_int(value: Any, name: str) -> int:
    """``value`` as an ``int >= 1``: ``"{name}={value!r} must be a positive integer"``."""
    return integer(value, name, min=1)


def seed_int(value: Any, name: str = "seed") -> int:
    """``value`` as an ``int >= 0``: ``"{name}={value!r} must be an integer >= 0"``."""
    return integer(value, name, min=0)


def to_numpy(x: Any, name: str, dtype: Any = np.float32) -> np.ndarray:
    """``x`` (numpy array, torch tensor or nested list) as a numpy array of ``dtype``.

    ``dtype=None`` keeps the input's own dtype. Tensors are detached and copied to the CPU
    (bfloat16 ones through float32, which numpy lacks).
    """
    torch = sys.modules.get("torch")  # a tensor implies torch is already imported
    if torch is not None and isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        x = (x.float() if x.dtype == torch.bfloat16 else x).numpy()
    try:
        return np.asarray(x, dtype=dtype)
    except (TypeError, ValueError) as e:
        raise MRLError(f"{name} of type {type(x).__name__} is not a numeric array: {e}") from e


def first_non_finite_row(x: np.ndarray) -> int | None:
    """Index of the first row of 2-D ``x`` holding NaN or inf, or None if all are finite.

    Scans in blocks (no full-size temporary), so a memory-mapped array is read once.
    """
    if not np.issubdtype(x.dtype, np.inexact):
        return None
    # one pass without a temporary: NaN/inf make the sum non-finite (so can a finite
    # overflow, which the exact scan below then clears)
    with np.errstate(over="ignore", invalid="ignore"):
        if np.isfinite(x.sum()):
            return None
    step = max(1, _SCAN_ELEMENTS // x.shape[1])
    for start in range(0, len(x), step):
        bad = np.flatnonzero(~np.isfinite(x[start : start + step]).all(axis=1))
        if len(bad):
            return start + int(bad[0])
    return None


_first_non_finite_row = first_non_finite_row


def as_matrix(x: Any, name: str, dtype: Any = np.float32, check_finite: bool = True) -> np.ndarray:
    """``x`` as a C-contiguous, non-empty, finite 2-D ``(rows, dims)`` array of ``dtype``.

    ``check_finite=False`` skips the NaN/inf scan (one read of the whole array), as SciPy's
    ``check_finite``: for arrays validated once and searched many times.

    Raises:
        MRLError: ``"{name} has shape ...; expected a non-empty 2-D array (rows, dims)"`` or
            ``"{name} holds NaN or infinite values (first at row {i}); expected finite
            numbers"``, or when ``x`` is not numeric.
    """
    x = np.ascontiguousarray(to_numpy(x, name, dtype))
    if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] == 0:
        raise MRLError(f"{name} has shape {x.shape}; expected a non-empty 2-D array (rows, dims)")
    row = _first_non_finite_row(x) if check_finite else None
    if row is not None:
        raise MRLError(
            f"{name} holds NaN or infinite values (first at row {row}); expected finite numbers"
        )
    return x


def as_labels(y: Any, n: int, name: str, num_classes: int | None = None) -> np.ndarray:
    """``y`` as an int64 vector of ``n`` class labels, each in ``0..num_classes-1``.

    Without ``num_classes`` labels only have to be non-negative. Float, bool and string
    labels are rejected (no silent rounding).
    """
    y = to_numpy(y, name, None)
    if y.ndim != 1 or len(y) != n:
        raise MRLError(f"{name} has shape {y.shape}; expected a 1-D vector of {n} labels")
    if not np.issubdtype(y.dtype, np.integer):
        raise MRLError(f"{name} has dtype {y.dtype}; expected integer class labels")
    y = y.astype(np.int64, copy=False)
    if not n:
        return y
    lo, hi = int(y.min()), int(y.max())
    if num_classes is not None and (lo < 0 or hi >= num_classes):
        raise MRLError(
            f"{name} has labels in [{lo}, {hi}]; with num_classes={num_classes} "
            f"they must lie in 0..{num_classes - 1}"
        )
    if lo < 0:
        raise MRLError(f"{name} has a negative label {lo}; labels are 0..C-1")
    return y


def as_sizes(sizes: Any, name: str) -> list[int]:
    """Representation sizes: strictly increasing positive ints (``[8, 16, ..., 2048]`` ok).

    Parsed by :func:`mrl.core.dims.parse_dims`; its messages name ``name`` instead of
    ``mrl.dims``.
    """
    from mrl.core.dims import parse_dims  # mrl.core.dims imports this module

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
