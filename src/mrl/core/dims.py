"""Nesting lists: parse and validate the prefix sizes ``M`` of a Matryoshka embedding.

Conventions
-----------
* A nesting list is a strictly increasing list of positive ints, e.g. ``[8, 16, ..., 2048]``.
* ``...`` expands from the two items before it up to the last: geometric when they double
  (``[8, 16, ..., 2048]`` -> 8, 16, 32, ..., 2048; ``[12, 24, ..., 768]`` -> 12, ..., 768),
  arithmetic otherwise (``[16, 48, ..., 144]`` -> 16, 48, 80, 112, 144). The expansion must
  land exactly on the last item.
* ``"auto"`` halves the width down to 8 (12 for widths of the 768 kind, i.e. widths with a
  factor 3 such as 384 or 768): 2048 -> [8, 16, ..., 2048]; 768 -> [12, 24, ..., 768].
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from mrl.core.errors import MRLError
from mrl.core.validate import is_int

ELLIPSIS_TOKENS = ("...", "…", Ellipsis)


def auto_dims(width: int) -> list[int]:
    """Consistent halving of ``width`` down to the smallest size >= 8 (12 for 3*2^k widths)."""
    if not is_int(width) or width < 1:
        raise MRLError(f"auto dims need a positive integer width, got {width!r}")
    width = int(width)
    floor = 12 if width % 3 == 0 else 8
    dims = [width]
    while dims[-1] % 2 == 0 and dims[-1] // 2 >= floor:
        dims.append(dims[-1] // 2)
    return sorted(dims)


def _as_int(item: Any, spec: Any) -> int:
    if is_int(item):
        return int(item)
    if isinstance(item, float) and item.is_integer():
        return int(item)
    if isinstance(item, str) and item.strip().lstrip("-").isdigit():
        return int(item.strip())
    raise MRLError(
        f"mrl.dims={spec!r}: {item!r} is not a dimension; use positive integers, '...' "
        "between the first two items and the last, or 'auto'"
    )


def _expand(first: int, second: int, last: int, spec: Any) -> list[int]:
    if second <= first:
        raise MRLError(
            f"mrl.dims={spec!r}: '...' needs increasing items before it, got {first}, {second}"
        )
    out = [first, second]
    if second == 2 * first:
        while out[-1] < last:
            out.append(out[-1] * 2)
        kind = "x2"
    else:
        step = second - first
        while out[-1] < last:
            out.append(out[-1] + step)
        kind = f"+{step}"
    if out[-1] != last:
        raise MRLError(
            f"mrl.dims={spec!r}: '...' ({kind} from {first}, {second}) cannot reach {last}; "
            f"it gives {out[-2]}, {out[-1]}: make the last item one of those steps"
        )
    return out


def parse_dims(spec: Any, width: int | None = None) -> list[int]:
    """Turn a nesting-list spec into a validated, strictly increasing list of ints.

    Args:
        spec: ``"auto"``, a single int, a comma string (``"8,16,...,64"``) or a sequence that
            may hold one ``"..."`` right before its last item.
        width: the embedding width the prefixes are cut from; required for ``"auto"``. When
            given, dims larger than it are allowed (the model adds a projection) but are
            reported by the caller.

    Raises:
        MRLError: empty list, non-integer, ``<= 0``, not increasing, duplicates, or a ``...``
            that cannot reach the last item.
    """
    if spec is None:
        raise MRLError("mrl.dims=None: give a list like [8,16,...,2048] or 'auto'")
    if isinstance(spec, str):
        text = spec.strip()
        if text.lower() == "auto":
            if width is None:
                raise MRLError("mrl.dims='auto' needs the backbone width")
            return auto_dims(width)
        text = text.strip("[]")
        items: list[Any] = [t.strip() for t in text.split(",") if t.strip()]
    elif is_int(spec):
        items = [int(spec)]
    elif isinstance(spec, Sequence) or hasattr(spec, "__iter__"):
        items = list(spec)
    else:
        raise MRLError(f"mrl.dims={spec!r}: expected a list of positive integers or 'auto'")
    if not items:
        raise MRLError(f"mrl.dims={spec!r} is empty: give at least one positive integer")

    n_ellipsis = sum(1 for it in items if it in ELLIPSIS_TOKENS)
    if n_ellipsis:
        pos = next(i for i, it in enumerate(items) if it in ELLIPSIS_TOKENS)
        if n_ellipsis > 1 or pos != len(items) - 2 or pos < 2:
            raise MRLError(
                f"mrl.dims={spec!r}: '...' must appear once, after at least two items and "
                "right before the last, e.g. [8,16,...,2048]"
            )
        head = [_as_int(it, spec) for it in items[:pos]]
        last = _as_int(items[-1], spec)
        for d in [*head, last]:
            if d <= 0:
                raise MRLError(f"mrl.dims={spec!r}: {d} is not a positive dimension")
        if any(b <= a for a, b in zip(head, head[1:], strict=False)):
            raise MRLError(f"mrl.dims={spec!r}: items must be strictly increasing")
        expanded = _expand(head[-2], head[-1], last, spec)
        dims = head[:-2] + expanded
    else:
        dims = [_as_int(it, spec) for it in items]

    for d in dims:
        if d <= 0:
            raise MRLError(f"mrl.dims={spec!r}: {d} is not a positive dimension")
    if len(set(dims)) != len(dims):
        dup = sorted({d for d in dims if dims.count(d) > 1})
        raise MRLError(f"mrl.dims={spec!r}: duplicate dims {dup}; each prefix size once")
    if any(b <= a for a, b in zip(dims, dims[1:], strict=False)):
        raise MRLError(
            f"mrl.dims={spec!r}: dims must be strictly increasing, e.g. {sorted(set(dims))}"
        )
    return dims


def parse_weights(weights: Any, dims: Sequence[int]) -> list[float]:
    """Relative importance ``c_m`` per prefix (paper: all 1). ``None`` gives ones.

    A list gives one weight per dim; a mapping ``{dim: weight}`` (keys ints or digit strings,
    e.g. ``{8: 2}``, the paper's "8boost") sets those dims and leaves the others at 1.
    """
    if weights is None:
        return [1.0] * len(dims)
    if hasattr(weights, "items"):
        given = {}
        for k, v in weights.items():
            key = str(k)
            if not key.isdigit() or int(key) not in dims:
                raise MRLError(
                    f"mrl.weights={dict(weights)!r}: {k!r} is not one of the dims {list(dims)}"
                )
            given[int(key)] = v
        weights = [given.get(m, 1.0) for m in dims]
    if isinstance(weights, str) or not hasattr(weights, "__iter__"):
        raise MRLError(
            f"mrl.weights={weights!r}: give a list of {len(dims)} non-negative numbers, "
            f"one per dim in {list(dims)}"
        )
    w = list(weights)
    if len(w) != len(dims):
        raise MRLError(
            f"mrl.weights={w}: has {len(w)} values but dims {list(dims)} has {len(dims)}; "
            "give one weight per dim"
        )
    out = []
    for x in w:
        try:
            xf = float(x)
        except (TypeError, ValueError):
            raise MRLError(f"mrl.weights={w}: {x!r} is not a number") from None
        if not xf >= 0 or xf == float("inf"):
            raise MRLError(f"mrl.weights={w}: {x!r} must be a finite number >= 0")
        out.append(xf)
    if sum(out) <= 0:
        raise MRLError(f"mrl.weights={w}: at least one weight must be > 0")
    return out
