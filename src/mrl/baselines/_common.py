"""Helpers shared by the baselines (the input validators live in :mod:`mrl.core.validate`)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def split_sizes(sizes: Sequence[int], limit: int) -> tuple[list[int], list[int]]:
    """``(sizes <= limit, sizes > limit)``: the ones a baseline can produce and the missing."""
    return [k for k in sizes if k <= limit], [k for k in sizes if k > limit]


def missing(sizes: Sequence[int]) -> dict[int, None]:
    """``{k: None}``: sizes a baseline cannot produce (the paper's '-'), never a number."""
    return dict.fromkeys(sizes)


def num_classes_of(*labels: np.ndarray) -> int:
    """One more than the largest label in any non-empty ``labels`` array."""
    return int(max(int(y.max()) for y in labels if len(y))) + 1
