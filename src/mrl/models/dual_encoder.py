"""A dual encoder (ALIGN / CLIP style): an image tower and a text tower, each followed by a
linear projection (no bias) to one shared embedding width; the Matryoshka prefixes are
slices of that shared embedding. Both outputs are unnormalised (every prefix is sliced, then
normalised, by its user)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from mrl.core.validate import positive_int


class DualEncoder(nn.Module):
    """``embed_images(x) -> (B, embed_dim)`` and ``embed_texts(texts) -> (B, embed_dim)``.

    Args:
        image: the image tower (:class:`~mrl.models.Backbone` contract: ``forward(x) -> (B,
            width)`` and ``width``); kept as ``backbone`` so the data follow its transforms.
        text: the text tower (:class:`~mrl.models.TextEncoder` contract: ``forward(texts or
            tokens) -> (B, width)``, ``width``, ``tokenizer_fn``).
        embed_dim: the shared embedding width.
    """

    def __init__(self, image: nn.Module, text: nn.Module, embed_dim: int) -> None:
        super().__init__()
        self.embed_dim = positive_int(embed_dim, "objective.embed_dim")
        self.backbone = image
        self.text = text
        self.image_proj = nn.Linear(int(image.width), self.embed_dim, bias=False)
        self.text_proj = nn.Linear(int(text.width), self.embed_dim, bias=False)

    def embed_images(self, x: torch.Tensor) -> torch.Tensor:
        """Shared-space embeddings of an image batch (unnormalised)."""
        return self.image_proj(self.backbone(x))

    def embed_texts(self, texts: Sequence[str] | dict[str, torch.Tensor]) -> torch.Tensor:
        """Shared-space embeddings of texts (strings or the text tower's tokens; unnormalised).

        Each distinct text (string, or row of ``input_ids``) is encoded once and its
        embedding repeated (templated captions repeat within a batch; the gradient reaches
        the text tower summed over the repeats, as without the shortcut).
        """
        distinct, inverse = unique_texts(texts)
        return self.text_proj(self.text(distinct))[inverse]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The image embedding (what image evaluators and exports read)."""
        return self.embed_images(x)


def unique_texts(
    texts: Sequence[str] | dict[str, torch.Tensor],
) -> tuple[list[str] | dict[str, torch.Tensor], torch.Tensor]:
    """``(distinct texts, inverse)`` with ``distinct[inverse[i]] == texts[i]``: strings, or
    tokens (distinct ``input_ids`` rows, every tensor of the dict indexed alike), in order of
    first appearance."""
    if isinstance(texts, dict):
        ids = texts["input_ids"]
        _, inv = torch.unique(ids, dim=0, return_inverse=True)
        n = int(inv.max()) + 1 if len(inv) else 0
        first = torch.full((n,), len(inv), dtype=torch.long, device=inv.device)
        first = first.scatter_reduce(0, inv, torch.arange(len(inv), device=inv.device), "amin")
        order = torch.argsort(first)  # first-appearance order
        rank = torch.empty_like(order)
        rank[order] = torch.arange(n, device=inv.device)
        return {k: v[first[order]] for k, v in texts.items()}, rank[inv]
    if isinstance(texts, str):
        texts = [texts]
    pos: dict[str, int] = {}
    inverse = [pos.setdefault(t, len(pos)) for t in texts]
    return list(pos), torch.as_tensor(inverse, dtype=torch.long)
