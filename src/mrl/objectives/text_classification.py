"""Supervised Matryoshka classification of text: the classification objective
(:class:`~mrl.objectives.classification.MRLLitModule`: nested heads, ``MatryoshkaLoss``,
``{val,test}/top{1,5}@d{m}``) with a text encoder (``model=hf_text``) as its backbone.

Used by ``experiment=text_wordnet_cls`` (WordNet glosses -> 45 lexicographer classes,
``data.task=classification``). Batches are ``(texts or tokens, labels)``; the module gives
the data its tokenizer when the run starts, as the contrastive objective does. MRL, MRL-E
(``mrl.efficient``) and FF-k (``mrl.ff_dim``) work as for images.

:func:`gloss_eval_data` embeds a data module's glosses (train = database, test = queries,
labels = classes) for the evaluator registry: kNN, linear probe, ... per prefix, the same
evaluators as images (:func:`mrl.eval.registry.run_evaluators`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn
from torchmetrics.classification import MulticlassAccuracy

from mrl.core.dims import parse_dims, parse_weights
from mrl.core.errors import MRLError
from mrl.core.validate import integer, number
from mrl.models import MRLModel, method_name
from mrl.objectives.classification import MRLLitModule
from mrl.objectives.contrastive import build_text_encoder
from mrl.objectives.nested import MatryoshkaLoss
from mrl.objectives.optim import make_optimizer, optim_settings, scale_lr, with_schedule


class TextClassifierLitModule(MRLLitModule):
    """:class:`MRLLitModule` over a :class:`~mrl.models.text.TextEncoder`.

    Args: as :class:`MRLLitModule`, without ``in_chans`` / ``img_size`` (image data are
    refused); ``model`` is a text model config (``conf/model/hf_text.yaml``);
    ``channels_last`` is accepted and ignored (no convolutions). ``head_lr_scale``: the
    new nested heads learn at ``optim.lr`` times this (the encoder is pretrained, the heads
    start from scratch), as ``objective=mlm``'s head does.
    """

    def __init__(
        self,
        model: dict[str, Any],
        num_classes: int,
        dims: Any = "auto",
        efficient: bool = False,
        ff_dim: int | str | None = None,
        weights: list[float] | None = None,
        label_smoothing: float = 0.1,
        optim: dict[str, Any] | None = None,
        channels_last: bool = False,
        head_lr_scale: float = 1.0,
        **data_info: Any,
    ) -> None:
        # past MRLLitModule.__init__ (it builds an image backbone) to NestedObjective's;
        # super() also lets save_hyperparameters find these arguments
        super(MRLLitModule, self).__init__()
        if data_info:
            raise MRLError(
                f"the text classifier trains on text, but the data gives {sorted(data_info)} "
                "(image data); use data=wordnet data.task=classification"
            )
        self.save_hyperparameters()
        encoder = build_text_encoder(model)
        self.embed_width = encoder.width
        dims_list = parse_dims(dims, encoder.width)
        if ff_dim is not None:
            ff_dim = dims_list[-1] if ff_dim in ("max", "auto") else ff_dim
            ff_dim = integer(ff_dim, "mrl.ff_dim", min=1, hint="or 'max'")
            dims_list = [ff_dim]
        encoder.expand_to(dims_list[-1])
        num_classes = integer(num_classes, "num_classes", min=2)
        self.net = MRLModel(encoder, dims_list, num_classes, efficient=efficient, ff_dim=ff_dim)
        self.dims = self.net.dims
        self.method = method_name(self.net.efficient, ff_dim)
        self.loss_fn = MatryoshkaLoss(
            self.dims,
            parse_weights(weights, self.dims) if ff_dim is None else None,
            label_smoothing,
        )
        self.prefix_weights = dict(zip(self.dims, self.loss_fn.weights, strict=True))
        self.optim_cfg = optim_settings(optim)
        self.head_lr_scale = number(head_lr_scale, "objective.head_lr_scale", positive=True)
        self._topks = sorted({1, min(5, num_classes)})
        self.metrics = nn.ModuleDict(
            {
                f"{stage}_{k}_{m}": MulticlassAccuracy(num_classes, top_k=k, average="micro")
                for stage in ("val", "test")
                for k in self._topks
                for m in self.dims
            }
        )

    def configure_optimizers(self):
        """``optim``'s optimiser and per-step schedule, the heads at ``head_lr_scale`` x lr."""
        opt = make_optimizer(self, self.optim_cfg)
        scale_lr(opt, self.net.head.parameters(), self.head_lr_scale)
        return with_schedule(opt, self.optim_cfg, self.trainer)

    def setup(self, stage: str) -> None:
        """Give the data this model's tokenizer (batches then arrive as tokens)."""
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if hasattr(dm, "set_tokenizer"):
            dm.set_tokenizer(self.net.backbone.tokenizer_fn())


@torch.no_grad()
def embed_texts(encoder: Any, texts: list[str], batch_size: int = 256) -> np.ndarray:
    """Full-width, unnormalised float32 embeddings of ``texts`` (encoder in eval mode)."""
    was_training = encoder.training
    encoder.eval()
    try:
        out = [
            encoder(texts[i : i + batch_size]).float().cpu()
            for i in range(0, len(texts), batch_size)
        ]
    finally:
        encoder.train(was_training)
    width = int(encoder.width)
    return torch.cat(out).numpy() if out else np.zeros((0, width), np.float32)


def gloss_eval_data(encoder: Any, dm: Any, batch_size: int = 256, heads: Any = None):
    """:class:`~mrl.eval.registry.EvalData` of a WordNet data module's glosses: train split =
    database, test = queries, val = calibration; labels = lexicographer classes.
    ``encoder``: a text encoder (``module.net`` of a contrastive run, ``module.net.backbone``
    of a classifier) or anything mapping a list of strings to ``(B, width)``. The arrays are
    :func:`mrl.encoders.text_classification_arrays`' (as ``eval.py`` on
    ``data.task=classification`` embeds them)."""
    from mrl.encoders import text_classification_arrays
    from mrl.eval.registry import EvalData

    arrays = text_classification_arrays(lambda t: embed_texts(encoder, t, batch_size), dm)
    return EvalData.from_arrays(arrays, int(dm.num_classes), heads=heads)
