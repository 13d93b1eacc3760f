"""The nested part of MRL that every objective and evaluator shares.

Conventions
-----------
* A prefix of size ``m`` is ``z[..., :m]``: the *first* m dims of the full embedding.
* Retrieval, kNN and few-shot use ``truncate(z, m, normalize=True)``: slice first, then
  L2-normalise the slice (normalising the full vector and then slicing is *not* the same).
* Classification heads read the raw, unnormalised slice.
* The training loss is the weighted *sum* (not the mean) of per-prefix losses:
  ``L = sum_m c_m * loss_m`` (:func:`nested_sum`; the paper's ``c_m`` are all 1).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from mrl.core.validate import integer


def truncate(z, m: int, normalize: bool = False):
    """First ``m`` dims of ``z`` along its last axis, L2-normalised *after* slicing if asked.

    Works on torch tensors and numpy arrays (returns the same kind). ``m`` must be in
    ``1..z.shape[-1]``. Zero rows stay zero when normalised (eps 1e-12).
    """
    width = z.shape[-1]
    m = integer(m, "truncate: m", min=1, max=width, hint="(the width)")
    out = z[..., :m]
    if not normalize:
        return out
    if isinstance(out, torch.Tensor):
        return F.normalize(out, p=2, dim=-1, eps=1e-12)
    out = np.asarray(out, dtype=np.float32)
    norm = np.linalg.norm(out, axis=-1, keepdims=True)
    return out / np.maximum(norm, 1e-12)


def nested_sum(
    per_prefix: Mapping[int, torch.Tensor], dims: Sequence[int], weights: Sequence[float]
):
    """``sum_m c_m * per_prefix[m]`` over ``dims`` (in order) with weights ``c_m``."""
    return sum(c * per_prefix[m] for c, m in zip(weights, dims, strict=True))
