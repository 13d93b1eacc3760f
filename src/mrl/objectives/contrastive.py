"""Matryoshka contrastive training on (query, document) text pairs.

``L = sum_m c_m * InfoNCE(truncate(q, m, normalize=True), truncate(d, m, normalize=True); tau)``
with in-batch negatives: for query ``i`` the positive is document ``i`` and the other
documents of the batch are its negatives; the same temperature ``tau`` at every prefix. The
query and document embeddings are computed once per batch (one encoder pass each) and
sliced per prefix. ``symmetric``: each term is the mean of the query->document and
document->query cross-entropies (CLIP-style). ``n_dims_per_step``: each step uses a random
subset of that many prefixes (as sentence-transformers' ``MatryoshkaLoss``; their weights are
not rescaled), drawn from torch's global generator. FF-k (``method=ff mrl.ff_dim=k``, k =
``max`` for the largest dim): only prefix ``k`` is trained (one InfoNCE term, weight 1); it is
still *evaluated* at every nesting dim up to k (plain truncation of FF), as the ALIGN row does.

The InfoNCE of one prefix is sentence-transformers' ``MultipleNegativesRankingLoss``
(``compute_loss_from_embeddings``: cross-entropy over similarities times ``scale = 1 / tau``),
fed our normalised slices with the dot product as similarity. That loss embeds with its
``model`` only in ``forward``, which is not used here: it is built without a model.

Logged: ``train/loss``, ``train/loss@d{m}`` (unweighted), and per evaluation split
(``val``, ``test``) the retrieval metrics of :mod:`mrl.eval.text_retrieval` for every
query of the split's synsets against all of the split's documents: ``{stage}/R@1@d{m}``,
``{stage}/R@10@d{m}``, ``{stage}/MRR@10@d{m}``, ``{stage}/nDCG@10@d{m}``, and
``{stage}/nDCG@10`` (the largest prefix; checkpoint selection). Training and evaluation run
in one process (several DDP processes are refused: the split's embeddings are not gathered).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss
from sentence_transformers.util import dot_score

from mrl.core.dims import parse_dims, parse_weights
from mrl.core.errors import MRLError
from mrl.core.nesting import truncate
from mrl.core.validate import integer, number
from mrl.eval.text_retrieval import DEFAULT_KS, text_retrieval_metrics
from mrl.objectives.nested import NestedObjective
from mrl.objectives.optim import optim_settings

MODEL_TARGET = "mrl.models.text.TextEncoder"


def build_text_encoder(model: dict[str, Any]):
    """The encoder of a ``model`` config (``_target_`` default :class:`TextEncoder`)."""
    from mrl.objectives.classification import instantiate_model

    model = dict(model)
    target = model.pop("_target_", MODEL_TARGET)
    model.pop("_partial_", None)
    encoder = instantiate_model(target, model)
    if not all(hasattr(encoder, a) for a in ("width", "expand_to", "tokenize", "tokenizer_fn")):
        raise MRLError(
            f"objective=contrastive needs a text model (model=hf_text); model._target_={target!r} "
            f"built a {type(encoder).__name__}"
        )
    return encoder


class NestedInfoNCE(torch.nn.Module):
    """``{m: InfoNCE at prefix m}`` of one batch's query and document embeddings.

    Args:
        dims: prefix sizes; temperature: ``tau`` (scale ``1 / tau``); symmetric: average the
            query->document and document->query directions.
    """

    def __init__(self, dims: list[int], temperature: float = 0.05, symmetric: bool = False):
        super().__init__()
        self.temperature = number(temperature, "objective.temperature", positive=True)
        self.dims = list(dims)
        self.symmetric = bool(symmetric)
        directions = ("query_to_doc", "doc_to_query") if symmetric else ("query_to_doc",)
        self.infonce = MultipleNegativesRankingLoss(
            model=None,  # embeddings come in; see the module doc
            scale=1.0 / self.temperature,
            similarity_fct=dot_score,
            directions=directions,
            partition_mode="per_direction",
        )

    def forward(
        self, q: torch.Tensor, d: torch.Tensor, dims: list[int] | None = None
    ) -> dict[int, torch.Tensor]:
        return {
            m: self.infonce.compute_loss_from_embeddings(
                [truncate(q, m, normalize=True), truncate(d, m, normalize=True)], None
            )
            for m in (self.dims if dims is None else dims)
        }


def draw_prefixes(dims: list[int], n: int | None) -> list[int]:
    """``dims``, or a random ``n`` of them in increasing order (torch's global generator)."""
    if n is None or n >= len(dims):
        return dims
    pick = torch.randperm(len(dims))[:n].sort().values
    return [dims[int(i)] for i in pick]


class ContrastiveLitModule(NestedObjective):
    """A text encoder trained with the nested InfoNCE loss on paired text.

    All arguments are plain values (the checkpoint's hyper-parameters):

    Args:
        model: text encoder options (``conf/model/hf_text.yaml``): ``_target_`` (default
            :class:`~mrl.models.text.TextEncoder`), ``name``, ``pooling``, ``max_seq_length``.
        dims: nesting spec (``auto``: 12..384 for a 384-wide model), see ``parse_dims``.
        weights: ``c_m`` per prefix (``mrl.weights``).
        temperature: InfoNCE temperature ``tau`` (0.05 = sentence-transformers' scale 20).
        symmetric: also the document->query direction.
        n_dims_per_step: random prefixes per step (null: all).
        ks: retrieval cut-offs of the evaluation (MRR and nDCG at the largest).
        optim: the optimiser and schedule (:mod:`mrl.objectives.optim`).
        num_classes: the data's class count (kept for the record; not trained here).
        ff_dim: FF-k (``max``: the largest dim): train prefix k only, evaluate every dim <= k.
        efficient: MRL-E needs classifier heads; anything but false is refused.
    """

    method = "MRL"

    def __init__(
        self,
        model: dict[str, Any],
        dims: Any = "auto",
        weights: Any = None,
        temperature: float = 0.05,
        symmetric: bool = False,
        n_dims_per_step: int | None = None,
        ks: list[int] | tuple[int, ...] = DEFAULT_KS,
        optim: dict[str, Any] | None = None,
        num_classes: int | None = None,
        efficient: bool = False,
        ff_dim: Any = None,
        **data_info: Any,
    ) -> None:
        super().__init__()
        if data_info:
            raise MRLError(
                f"objective=contrastive trains on text pairs, but the data gives "
                f"{sorted(data_info)} (image data); use data=wordnet"
            )
        if efficient:
            raise MRLError(
                "objective=contrastive has no classifier heads: mrl.efficient (MRL-E) applies "
                "to objective=classification only; use method=mrl or method=ff"
            )
        self.save_hyperparameters()
        self.net = build_text_encoder(model)
        nested = parse_dims(dims, self.net.width)
        self.net.expand_to(nested[-1])
        if ff_dim is not None:
            ff_dim = nested[-1] if ff_dim in ("max", "auto") else ff_dim
            ff_dim = integer(ff_dim, "mrl.ff_dim", min=1, max=self.net.width, hint="or 'max'")
            self.dims = [ff_dim]
            self.eval_dims = [m for m in nested if m < ff_dim] + [ff_dim]
            self.method = f"FF-{ff_dim}"
        else:
            self.dims = self.eval_dims = nested
        w = parse_weights(weights, self.dims) if ff_dim is None else [1.0]
        self.prefix_weights = dict(zip(self.dims, w, strict=True))
        if n_dims_per_step is not None:
            n_dims_per_step = integer(n_dims_per_step, "objective.n_dims_per_step", min=1)
        self.n_dims_per_step = n_dims_per_step
        self.loss_fn = NestedInfoNCE(self.dims, temperature, symmetric)
        self.ks = tuple(sorted({int(k) for k in ks}))
        self.optim_cfg = optim_settings(optim)
        self.report_metrics = (f"nDCG@{self.ks[-1]}", f"R@{self.ks[-1]}", f"R@{self.ks[0]}")
        self._eval: dict[str, list] = {}

    # ------------------------------------------------------------------ forward
    def forward(self, texts: list[str] | dict[str, torch.Tensor]) -> torch.Tensor:
        """Full-width, unnormalised embeddings of ``texts`` (strings or tokens)."""
        return self.net(texts)

    def embed(self, texts: list[str] | dict[str, torch.Tensor]) -> torch.Tensor:
        return self.net(texts)

    def setup(self, stage: str) -> None:
        """Give the data this model's tokenizer (batches then arrive as tokens)."""
        if self._trainer is not None and self.trainer.world_size > 1:
            raise MRLError(
                f"objective=contrastive evaluates retrieval in one process, but the trainer runs "
                f"{self.trainer.world_size}; use trainer.devices=1 trainer.num_nodes=1"
            )
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if hasattr(dm, "set_tokenizer"):
            dm.set_tokenizer(self.net.tokenizer_fn())

    # ------------------------------------------------------------------ training
    def step_dims(self) -> list[int]:
        """The prefixes of this step (all, or a random ``n_dims_per_step`` of them)."""
        return draw_prefixes(self.dims, self.n_dims_per_step)

    def prefix_losses(self, batch: dict[str, list[str]]) -> dict[int, torch.Tensor]:
        q = self.net(batch["query"])  # once per batch, sliced per prefix
        d = self.net(batch["doc"])
        return self.loss_fn(q, d, self.step_dims())

    # ------------------------------------------------------------------ evaluation
    def _eval_start(self) -> None:
        self._eval = {"x": [], "doc_id": [], "is_query": []}

    def on_validation_epoch_start(self) -> None:
        self._eval_start()

    def on_test_epoch_start(self) -> None:
        self._eval_start()

    def _eval_step(self, batch: dict[str, Any]) -> None:
        self._eval["x"].append(self.net(batch["text"]).float().cpu())
        self._eval["doc_id"].append(batch["doc_id"].cpu())
        self._eval["is_query"].append(batch["is_query"].cpu())

    def validation_step(self, batch, batch_idx):
        self._eval_step(batch)

    def test_step(self, batch, batch_idx):
        self._eval_step(batch)

    def _eval_end(self, stage: str) -> None:
        if not self._eval.get("x"):
            return
        x = torch.cat(self._eval["x"]).numpy()
        ids = torch.cat(self._eval["doc_id"]).numpy()
        is_q = torch.cat(self._eval["is_query"]).numpy()
        self._eval = {}
        metrics = retrieval_from_items(x, ids, is_q, self.eval_dims, self.ks, f"{stage}/")
        for k, v in metrics.items():
            self.log(k, v, on_step=False, on_epoch=True)
        key = f"{stage}/nDCG@{self.ks[-1]}"
        self.log(key, metrics[f"{key}@d{self.eval_dims[-1]}"], prog_bar=True)

    def on_validation_epoch_end(self) -> None:
        self._eval_end("val")

    def on_test_epoch_end(self) -> None:
        self._eval_end("test")


def retrieval_from_items(
    x: np.ndarray,
    doc_id: np.ndarray,
    is_query: np.ndarray,
    dims: list[int],
    ks: tuple[int, ...] = DEFAULT_KS,
    prefix: str = "",
) -> dict[str, float]:
    """Retrieval metrics of evaluation items (embeddings, document id, query flag): every
    query against every document seen (queries whose document was not seen, e.g. under
    ``limit_test_batches``, are left out)."""
    docs = np.flatnonzero(~is_query)
    if not len(docs):
        raise MRLError("the evaluation batches hold no documents; raise limit_*_batches")
    row = {int(j): i for i, j in enumerate(doc_id[docs])}
    queries = np.asarray([i for i in np.flatnonzero(is_query) if int(doc_id[i]) in row])
    if not len(queries):
        raise MRLError("the evaluation batches hold no queries; raise limit_*_batches")
    relevant = np.asarray([row[int(doc_id[i])] for i in queries], np.int64)
    return text_retrieval_metrics(x[docs], x[queries], relevant, dims, ks, prefix)
