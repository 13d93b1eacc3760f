"""Matryoshka masked-language modelling (``objective=mlm``, data ``task=mlm``).

BERT's masked-language loss with a Matryoshka output layer tied to the input embeddings
(MRL-E style): with ``E`` the ``(V, H)`` word-embedding matrix of the encoder, ``b`` the
``(V,)`` output bias and ``h = transform(last_hidden_state)`` at the masked positions,

    ``logits_m = h[:, :m] @ E[:, :m]^T + b``        (prefix m, the full vocabulary)

and ``L = sum_m c_m * CE(logits_m, original token)`` over masked positions only (labels
-100 elsewhere). ``transform`` is BERT's prediction-head transform (``dense -> gelu ->
LayerNorm``, :class:`transformers.models.bert.modeling_bert.BertPredictionHeadTransform`),
applied once at full width; the slice is taken after it. Parameter names follow
``BertForMaskedLM``'s head (``head.transform.dense``, ``head.transform.LayerNorm``,
``head.bias``). A sentence-transformers folder such as the bundled MiniLM holds only the
encoder: the transform and the bias are *newly initialised* (BERT's init: normal(0,
``initializer_range``) weights, LayerNorm 1 / 0); the decoder needs no weights of its own
(it is ``E``). The output bias starts at the log unigram prior of the training texts' tokens
(``bias_init=prior``, add-one smoothed, special tokens excluded, counted over the first
``PRIOR_TEXTS`` training texts of the seeded split order), so that every prefix
starts from the unigram model rather than from a uniform guess over the vocabulary (a
zero bias, ``bias_init=zeros``, moves by about ``lr`` per step and needs thousands of steps
to learn the token frequencies that a short fine-tune never reaches).

Masking is transformers' ``DataCollatorForLanguageModeling`` (``mlm_probability`` of the
non-special tokens; of those 80 % -> ``[MASK]``, 10 % -> a random token, 10 % kept),
applied by :class:`MaskingTokenizer`, which the module hands to the data
(``set_tokenizer``) when the run starts.

FF (``method=ff``, ``mrl.ff_dim=k``; ``max``: the largest dim): only prefix ``k`` is trained
(one term, weight 1), and the model is still *evaluated* at every nesting dim up to ``k``
(its tied output read by prefix without having been trained for it).

Logged: ``train/loss``, ``train/loss@d{m}``; per evaluation split ``{stage}/mlm_acc@d{m}``
(top-1 accuracy of the original token at the masked positions, a fraction) and
``{stage}/mlm_loss@d{m}`` (mean CE per masked token), ``{stage}/mlm_acc`` (largest prefix;
checkpoint selection).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mrl.core.dims import parse_dims, parse_weights
from mrl.core.errors import MRLError
from mrl.core.validate import integer, is_number, number
from mrl.objectives.contrastive import build_text_encoder
from mrl.objectives.nested import NestedObjective
from mrl.objectives.optim import make_optimizer, optim_settings, scale_lr, with_schedule

IGNORE = -100
BIAS_INITS = ("prior", "zeros")
PRIOR_TEXTS = 20_000  # training texts counted for the bias prior (the split is in seeded order)


class MaskingTokenizer:
    """``(texts, seed=None) -> {"input_ids", "attention_mask", "labels"}``: tokenise (truncate
    to ``max_length``), pad, then mask with ``DataCollatorForLanguageModeling``; ``seed``
    (an int) makes the masks of one call reproducible, ``None`` uses torch's generator.
    Picklable (no model inside), so data workers can run it."""

    def __init__(self, tokenizer: Any, max_length: int, mlm_probability: float = 0.15) -> None:
        if tokenizer.mask_token is None:
            raise MRLError(
                f"objective=mlm needs a tokenizer with a mask token; {type(tokenizer).__name__} "
                "has none (use a BERT-style model)"
            )
        self.tokenizer = tokenizer
        self.max_length = int(max_length)
        self.mlm_probability = float(mlm_probability)

    def __call__(self, texts: list[str], seed: int | None = None) -> dict[str, torch.Tensor]:
        from transformers import DataCollatorForLanguageModeling

        enc = self.tokenizer(
            list(texts),
            truncation=True,
            max_length=self.max_length,
            return_special_tokens_mask=True,
        )
        rows = [
            {k: enc[k][i] for k in ("input_ids", "attention_mask", "special_tokens_mask")}
            for i in range(len(texts))
        ]
        collator = DataCollatorForLanguageModeling(
            self.tokenizer,
            mlm=True,
            mlm_probability=self.mlm_probability,
            seed=seed,
            return_tensors="pt",
        )
        batch = collator(rows)
        return {k: batch[k] for k in ("input_ids", "attention_mask", "labels")}


def token_log_prior(tokenizer: Any, texts: list[str], max_length: int) -> torch.Tensor:
    """``(V,)`` float32 log-frequencies of the tokens of ``texts`` (truncated to
    ``max_length``, as training sees them), add-one smoothed over the tokenizer's vocabulary;
    special tokens ([CLS], [SEP], [PAD], ...) are never masked and get the smoothing count only.
    """
    vocab = len(tokenizer)
    counts = torch.ones(vocab, dtype=torch.float64)
    ids = tokenizer(list(texts), truncation=True, max_length=max_length)["input_ids"]
    flat = torch.tensor([t for row in ids for t in row], dtype=torch.long)
    counts += torch.bincount(flat, minlength=vocab)[:vocab].double()
    special = torch.tensor(sorted(set(tokenizer.all_special_ids)), dtype=torch.long)
    counts[special] = 1.0
    return (counts / counts.sum()).log().float()


def init_bert_weights(module: nn.Module, std: float) -> None:
    """BERT's initialisation of a new head: normal(0, std) weights, zero biases, LN 1 / 0."""
    for sub in module.modules():
        if isinstance(sub, nn.Linear):
            nn.init.normal_(sub.weight, std=std)
            if sub.bias is not None:
                nn.init.zeros_(sub.bias)
        elif isinstance(sub, nn.LayerNorm):
            nn.init.ones_(sub.weight)
            nn.init.zeros_(sub.bias)


class MatryoshkaMLMHead(nn.Module):
    """BERT's MLM head with the decoder tied to ``embeddings`` and read by prefix.

    ``forward(hidden, dims) -> {m: (N, V) logits}`` with
    ``logits_m = transform(hidden)[:, :m] @ E[:, :m]^T + bias``.
    """

    def __init__(self, config: Any, embeddings: nn.Embedding) -> None:
        super().__init__()
        from transformers.models.bert.modeling_bert import BertPredictionHeadTransform

        self.transform = BertPredictionHeadTransform(config)
        init_bert_weights(self.transform, float(getattr(config, "initializer_range", 0.02)))
        self.embeddings = [embeddings]  # a reference, not a submodule: E is the encoder's
        self.bias = nn.Parameter(torch.zeros(embeddings.num_embeddings))

    @property
    def weight(self) -> torch.Tensor:
        """The tied decoder weight ``E`` ``(V, H)`` (the encoder's input embeddings)."""
        return self.embeddings[0].weight

    def forward(self, hidden: torch.Tensor, dims: list[int]) -> dict[int, torch.Tensor]:
        h = self.transform(hidden)
        E = self.weight
        return {m: h[..., :m] @ E[:, :m].T + self.bias for m in dims}


class MLMLitModule(NestedObjective):
    """A text encoder trained with the Matryoshka masked-language loss (module doc).

    Args:
        model: text encoder options (``conf/model/hf_text.yaml``); its transformers model
            must have word embeddings and its tokenizer a mask token (BERT-style).
        dims: nesting spec (``auto``: 12..384 for a 384-wide model); weights: ``c_m``.
        mlm_probability: fraction of the tokens masked (BERT: 0.15).
        bias_init: ``prior`` (the output bias starts at the training tokens' log unigram
            prior, from the data's ``texts("train")`` when fitting starts; data without
            ``texts`` keeps zeros; a resumed run restores its own) or ``zeros``.
        head_lr_scale: the new head's (transform, bias) learning rate is ``optim.lr`` times
            this (the encoder is pretrained, the head starts from scratch).
        optim: the optimiser and schedule (:mod:`mrl.objectives.optim`).
        num_classes: the data's class count (kept for the record; not trained here).
        ff_dim: FF-k (``max``: the largest dim): train prefix k only, evaluate every dim <= k.
        efficient: accepted for ``method=`` (the tied output is MRL-E already); ignored.
    """

    method = "MRL-E"
    report_metrics = ("mlm_acc",)  # fractions (the per-prefix mlm_loss is in metrics.json)

    def __init__(
        self,
        model: dict[str, Any],
        dims: Any = "auto",
        weights: Any = None,
        mlm_probability: float = 0.15,
        bias_init: str = "prior",
        head_lr_scale: float = 1.0,
        optim: dict[str, Any] | None = None,
        num_classes: int | None = None,
        ff_dim: Any = None,
        efficient: bool = False,
        **data_info: Any,
    ) -> None:
        super().__init__()
        if data_info:
            raise MRLError(
                f"objective=mlm trains on text, but the data gives {sorted(data_info)} (image "
                "data); use data=wordnet data.task=mlm (experiment=text_wordnet_mlm)"
            )
        p = mlm_probability
        if not is_number(p) or not 0 < float(p) < 1:
            raise MRLError(f"objective.mlm_probability={p!r} must be a fraction in (0, 1)")
        self.head_lr_scale = number(head_lr_scale, "objective.head_lr_scale", positive=True)
        if bias_init not in BIAS_INITS:
            raise MRLError(f"objective.bias_init={bias_init!r} is not one of {list(BIAS_INITS)}")
        self.bias_init = bias_init
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
        embeddings = self.net.model.get_input_embeddings()
        if not isinstance(embeddings, nn.Embedding):
            raise MRLError(f"objective=mlm needs word embeddings; model {self.net.name!r} has none")
        self.head = MatryoshkaMLMHead(self.net.model.config, embeddings)
        self.mlm_probability = float(p)
        self.optim_cfg = optim_settings(optim)
        self._eval: dict[int, list[float]] = {}

    @property
    def max_length(self) -> int:
        """Tokens per text: the model's ``max_seq_length``, else the tokenizer's limit."""
        return self.net.max_seq_length or self.net.tokenizer.model_max_length

    def masking_tokenizer(self) -> MaskingTokenizer:
        return MaskingTokenizer(self.net.tokenizer, self.max_length, self.mlm_probability)

    def configure_optimizers(self):
        """``optim``'s optimiser and per-step schedule, the head's groups at
        ``head_lr_scale`` times the learning rate."""
        opt = scale_lr(
            make_optimizer(self, self.optim_cfg), self.head.parameters(), self.head_lr_scale
        )
        return with_schedule(opt, self.optim_cfg, self.trainer)

    def setup(self, stage: str) -> None:
        """Give the data this model's masking tokenizer (batches then arrive masked); when
        fitting with ``bias_init=prior``, set the output bias to the log unigram prior of the
        data's training texts (a checkpoint being resumed is restored after this)."""
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if dm is None:
            return
        if getattr(dm, "task", "mlm") != "mlm" or not hasattr(dm, "set_tokenizer"):
            raise MRLError(
                f"objective=mlm needs masked text: use data=wordnet data.task=mlm (the data is "
                f"{getattr(dm, 'name', '?')!r} with task {getattr(dm, 'task', None)!r})"
            )
        dm.set_tokenizer(self.masking_tokenizer())
        if stage == "fit" and self.bias_init == "prior" and hasattr(dm, "texts"):
            texts = dm.texts("train")[:PRIOR_TEXTS]
            prior = token_log_prior(self.net.tokenizer, texts, self.max_length)
            with torch.no_grad():
                self.head.bias.copy_(prior[: self.head.bias.numel()])

    # ------------------------------------------------------------------ forward
    def forward(self, texts: list[str] | dict[str, torch.Tensor]) -> torch.Tensor:
        """Full-width, unnormalised pooled embeddings (the encoder's; the head is not used)."""
        return self.net(texts)

    def embed(self, texts: list[str] | dict[str, torch.Tensor]) -> torch.Tensor:
        return self.net(texts)

    def masked_logits(
        self, batch: dict[str, torch.Tensor], dims: list[int] | None = None
    ) -> tuple[dict, torch.Tensor]:
        """``({m: (N, V) logits at the N masked positions}, (N,) original tokens)`` for the
        prefixes ``dims`` (default: the trained ones)."""
        if "input_ids" not in batch or "labels" not in batch:
            raise MRLError(
                "objective=mlm got an unmasked batch; the data must use the module's masking "
                "tokenizer (data.task=mlm)"
            )
        dev = self.net.device
        hidden = self.net.model(
            input_ids=batch["input_ids"].to(dev), attention_mask=batch["attention_mask"].to(dev)
        ).last_hidden_state
        labels = batch["labels"].to(dev)
        at = labels != IGNORE
        return self.head(hidden[at], self.dims if dims is None else dims), labels[at]

    def prefix_losses(self, batch: dict[str, torch.Tensor]) -> dict[int, torch.Tensor]:
        logits, target = self.masked_logits(batch)
        if not target.numel():  # nothing masked in this batch (a few very short texts)
            return {m: v.sum() * 0.0 for m, v in logits.items()}
        return {m: F.cross_entropy(v.float(), target) for m, v in logits.items()}

    # ------------------------------------------------------------------ evaluation
    def _eval_start(self) -> None:
        self._eval = {m: [0.0, 0.0, 0.0] for m in self.eval_dims}  # correct, loss sum, count

    def on_validation_epoch_start(self) -> None:
        self._eval_start()

    def on_test_epoch_start(self) -> None:
        self._eval_start()

    def _eval_step(self, batch: dict[str, torch.Tensor]) -> None:
        logits, target = self.masked_logits(batch, self.eval_dims)
        for m, v in logits.items():
            acc = self._eval[m]
            acc[0] += float((v.argmax(-1) == target).sum())
            acc[1] += float(F.cross_entropy(v.float(), target, reduction="sum"))
            acc[2] += int(target.numel())

    def validation_step(self, batch, batch_idx):
        self._eval_step(batch)

    def test_step(self, batch, batch_idx):
        self._eval_step(batch)

    def _eval_end(self, stage: str) -> None:
        if not self._eval or not self._eval[self.eval_dims[0]][2]:
            return
        for m, (correct, loss, n) in self._eval.items():
            self.log(f"{stage}/mlm_acc@d{m}", correct / n, on_epoch=True, sync_dist=True)
            self.log(f"{stage}/mlm_loss@d{m}", loss / n, on_epoch=True, sync_dist=True)
        top = self._eval[self.eval_dims[-1]]
        self.log(f"{stage}/mlm_acc", top[0] / top[2], prog_bar=True, sync_dist=True)
        self._eval = {}

    def on_validation_epoch_end(self) -> None:
        self._eval_end("val")

    def on_test_epoch_end(self) -> None:
        self._eval_end("test")
