"""The nested loss: per-prefix losses summed with the relative-importance weights."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from mrl.core.dims import parse_dims, parse_weights
from mrl.core.errors import MRLError
from mrl.core.nesting import nested_sum


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
        return nested_sum(per, self.dims, self.weights), per
