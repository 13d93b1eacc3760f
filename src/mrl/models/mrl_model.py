"""Backbone + nested heads: ``embed(x) -> z`` and ``forward(x) -> {m: logits}``."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
from torch import nn

from mrl.core.dims import parse_dims
from mrl.core.errors import MRLError
from mrl.models.backbone import Backbone
from mrl.models.heads import MRLHead

log = logging.getLogger(__name__)

METHODS = ("mrl", "mrl_e", "ff")


def method_name(efficient: bool, ff_dim: int | None) -> str:
    """Paper-style name of a training method: ``MRL``, ``MRL-E`` or ``FF-k``."""
    if ff_dim is not None:
        return f"FF-{ff_dim}"
    return "MRL-E" if efficient else "MRL"


class MRLModel(nn.Module):
    """A timm backbone whose embedding is trained with one classifier per nested prefix.

    Args:
        backbone: the feature extractor (its ``embed_dim`` must be >= max(dims)).
        dims: nesting list (already parsed), e.g. ``[8, 16, ..., 512]``.
        num_classes: number of classes of the heads.
        efficient: MRL-E (one shared classifier) instead of MRL (one per prefix).
        ff_dim: fixed-feature baseline FF-k: a single head reading the first ``ff_dim``
            features (``dims`` is then ``[ff_dim]``).
    """

    def __init__(
        self,
        backbone: Backbone,
        dims: Sequence[int],
        num_classes: int,
        efficient: bool = False,
        ff_dim: int | None = None,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.dims = [int(ff_dim)] if ff_dim is not None else parse_dims(list(dims))
        if self.dims[-1] > backbone.embed_dim:
            raise MRLError(
                f"max(dims)={self.dims[-1]} exceeds the embedding width {backbone.embed_dim}"
            )
        self.efficient = bool(efficient) and ff_dim is None
        self.ff_dim = ff_dim
        self.head = MRLHead(self.dims, num_classes, efficient=self.efficient)

    @property
    def embed_dim(self) -> int:
        return self.backbone.embed_dim

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Full-width, unnormalised embedding ``z``; every prefix is ``truncate(z, m)``."""
        return self.backbone(x)

    def forward(self, x: torch.Tensor) -> dict[int, torch.Tensor]:
        return self.head(self.embed(x))
