"""Linear classifiers on every prefix of an embedding (MRL and MRL-E)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from mrl.core.dims import parse_dims
from mrl.core.errors import MRLError
from mrl.core.validate import positive_int


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
        num_classes = positive_int(num_classes, "num_classes")
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
