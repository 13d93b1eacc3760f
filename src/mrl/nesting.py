"""The nested part of MRL: one ``truncate`` for every prefix, and the per-prefix heads.

Conventions
-----------
* A prefix of size ``m`` is ``z[..., :m]``: the *first* m dims of the full embedding.
* Retrieval, kNN and few-shot use ``truncate(z, m, normalize=True)``: slice first, then
  L2-normalise the slice (normalising the full vector and then slicing is *not* the same).
* Classification heads read the raw, unnormalised slice.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mrl.dims import parse_dims
from mrl.errors import MRLError


def truncate(z, m: int, normalize: bool = False):
    """First ``m`` dims of ``z`` along its last axis, L2-normalised *after* slicing if asked.

    Works on torch tensors and numpy arrays (returns the same kind). ``m`` must be in
    ``1..z.shape[-1]``. Zero rows stay zero when normalised (eps 1e-12).
    """
    width = z.shape[-1]
    if isinstance(m, bool) or not isinstance(m, (int, np.integer)) or not 1 <= m <= width:
        raise MRLError(f"truncate: m={m!r} must be an integer in 1..{width} (the width)")
    out = z[..., :m]
    if not normalize:
        return out
    if isinstance(out, torch.Tensor):
        return F.normalize(out, p=2, dim=-1, eps=1e-12)
    out = np.asarray(out, dtype=np.float32)
    norm = np.linalg.norm(out, axis=-1, keepdims=True)
    return out / np.maximum(norm, 1e-12)


class MRLHead(nn.Module):
    """Linear classifiers on every prefix of an embedding; ``forward(z) -> {m: logits}``.

    * ``efficient=False`` (MRL): one ``nn.Linear(m, num_classes)`` per prefix m (own weight
      and bias), i.e. ``sum(dims) * C + len(dims) * C`` parameters.
    * ``efficient=True`` (MRL-E): one shared ``nn.Linear(max(dims), num_classes)``; prefix m
      uses its first m columns ``W[:, :m]`` and the *full* bias ``b``. All prefixes are
      computed in one pass: the product of each block of dims is added to the previous
      prefix's logits (a running sum, one ``addmm`` per block), which
      equals the per-prefix ``z[:, :m] @ W[:, :m].T + b`` up to float rounding.

    Heads read the raw slice (no normalisation). Keys are ints, in increasing order.
    """

    def __init__(
        self, dims: Sequence[int], num_classes: int, efficient: bool = False, bias: bool = True
    ) -> None:
        super().__init__()
        self.dims = parse_dims(list(dims))
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise MRLError(f"num_classes={num_classes!r} must be a positive integer")
        self.num_classes = num_classes
        self.efficient = bool(efficient)
        if self.efficient:
            self.shared = nn.Linear(self.dims[-1], num_classes, bias=bias)
        else:
            self.heads = nn.ModuleList(nn.Linear(m, num_classes, bias=bias) for m in self.dims)

    @property
    def in_features(self) -> int:
        return self.dims[-1]

    def forward(self, z: torch.Tensor) -> dict[int, torch.Tensor]:
        if z.shape[-1] < self.dims[-1]:
            raise MRLError(
                f"MRLHead: embedding width {z.shape[-1]} is smaller than max(dims)={self.dims[-1]}"
            )
        if not self.efficient:
            return {m: head(z[:, :m]) for m, head in zip(self.dims, self.heads, strict=True)}
        w, b = self.shared.weight, self.shared.bias
        # one product per block [start, m), each added to the previous prefix's logits by
        # the same addmm: max(dims) work instead of sum(dims), no stacked intermediate
        out: dict[int, torch.Tensor] = {}
        acc, start = b, 0
        for m in self.dims:
            part = z[:, start:m]
            acc = part @ w[:, start:m].T if acc is None else torch.addmm(acc, part, w[:, start:m].T)
            out[m], start = acc, m
        return out

    def forward_naive(self, z: torch.Tensor) -> dict[int, torch.Tensor]:
        """Reference implementation: one matmul per prefix (used by tests and benchmarks)."""
        if not self.efficient:
            return self.forward(z)
        w, b = self.shared.weight, self.shared.bias
        return {m: F.linear(z[:, :m], w[:, :m], b) for m in self.dims}


class MatryoshkaLoss(nn.Module):
    """``L = sum_m c_m * CE(logits_m, y)``: the weighted *sum* (not mean) over prefixes.

    Args:
        dims: the prefix sizes, as keys of the logits dict passed to ``forward``.
        weights: relative importance ``c_m`` (paper: all 1; "8boost": ``c_8 = 2``).
        label_smoothing: applied inside every term (paper: 0.1).

    ``forward(logits, y)`` returns ``(total, {m: unweighted CE at m})``.
    """

    def __init__(
        self,
        dims: Sequence[int],
        weights: Sequence[float] | None = None,
        label_smoothing: float = 0.0,
    ) -> None:
        super().__init__()
        from mrl.dims import parse_weights

        self.dims = parse_dims(list(dims))
        self.weights = parse_weights(weights, self.dims)
        if not 0.0 <= float(label_smoothing) < 1.0:
            raise MRLError(f"label_smoothing={label_smoothing!r} must be in [0, 1)")
        self.label_smoothing = float(label_smoothing)

    def forward(
        self, logits: dict[int, torch.Tensor], target: torch.Tensor
    ) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
        missing = [m for m in self.dims if m not in logits]
        if missing:
            raise MRLError(f"MatryoshkaLoss: logits lack prefixes {missing}; got {list(logits)}")
        per = {
            m: F.cross_entropy(logits[m], target, label_smoothing=self.label_smoothing)
            for m in self.dims
        }
        total = sum(c * per[m] for c, m in zip(self.weights, self.dims, strict=True))
        return total, per
