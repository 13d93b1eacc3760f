"""Input checks specific to the evaluators (every failure is a one-line MRLError).

The generic validators (integers, matrices, labels) live in :mod:`mrl.core.validate`.
"""

from __future__ import annotations

from collections.abc import Sequence

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
