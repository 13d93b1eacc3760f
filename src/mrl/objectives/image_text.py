"""Matryoshka dual encoder (ALIGN-style) on (image, caption) pairs.

The image tower is the ``model`` config's backbone (any timm name, built as for
``objective=classification``), the text tower the ``text_model`` config's
:class:`~mrl.models.TextEncoder`; each is followed by a linear projection to the shared
``embed_dim`` (:class:`~mrl.models.dual_encoder.DualEncoder`), on which the prefixes nest:

``L = sum_m c_m * InfoNCE(truncate(img, m, normalize=True), truncate(txt, m, normalize=True))``

the per-prefix loss of :class:`~mrl.objectives.contrastive.NestedInfoNCE` (in-batch
negatives, temperature ``tau``; ``symmetric``: the mean of image->text and text->image).
``n_dims_per_step`` draws a random subset of prefixes per step, as ``objective=contrastive``.
FF-k (``mrl.ff_dim=k``, ``method=ff``: k = the largest dim): the projections are k wide and
only prefix k is trained; it is still *evaluated* at every nesting dim up to k (plain
truncation of FF).

Logged per evaluation split (``val``, ``test``) and prefix ``m`` (:mod:`mrl.eval.image_text`;
fractions): ``{stage}/i2t_R@{k}@d{m}``, ``{stage}/t2i_R@{k}@d{m}`` (texts of the split from the
data's ``eval_texts``), ``{stage}/zeroshot_top1@d{m}`` (when the data have class prompts),
and at test ``test/knn_top1@d{m}``, ``test/knn_top5@d{m}`` (image embeddings; database = the
training images, queries = the test images; data with labels). ``{stage}/i2t_R@1`` is the
largest prefix's (checkpoint selection). One process only (embeddings are not gathered).

``baselines`` (``objective.baselines``, default ``[truncate]``): at test, every metric again on
``pca`` or ``random_projection`` prefixes of the same embeddings (:mod:`mrl.eval.baselines`),
keys suffixed as ``eval.baselines``: ``test/i2t_R@1@d8/pca``. The transform is fitted on the
**training images' embeddings only** (the kNN database) and applied to images and texts alike,
so both towers stay in one space.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from mrl.core.dims import parse_dims, parse_weights
from mrl.core.errors import MRLError
from mrl.core.validate import integer, number, positive_int
from mrl.eval.baselines import baseline_transform, check_baselines
from mrl.eval.image_text import DEFAULT_KS, cross_modal_recall, knn_topk, zero_shot_top1
from mrl.models.dual_encoder import DualEncoder
from mrl.objectives.classification import build_backbone
from mrl.objectives.contrastive import NestedInfoNCE, build_text_encoder, draw_prefixes
from mrl.objectives.nested import NestedObjective
from mrl.objectives.optim import make_optimizer, optim_settings, scale_lr, with_schedule

#: ``objective.baselines`` a dual encoder takes (of :mod:`mrl.eval.baselines`; not the adaptor)
BASELINES = ("truncate", "pca", "random_projection")


class ImageTextLitModule(NestedObjective):
    """A dual encoder trained with the nested symmetric InfoNCE loss.

    All arguments are plain values (the checkpoint's hyper-parameters):

    Args:
        model: the image tower (``conf/model/*.yaml``, see
            :func:`~mrl.objectives.classification.build_backbone`).
        text_model: the text tower (``conf/model/hf_text.yaml`` keys).
        in_chans, img_size: from the data; num_classes: from the data (None: no labels).
        embed_dim: the shared embedding width (the projections' output).
        dims: nesting spec (``auto``: halvings of ``embed_dim``); weights: ``c_m``.
        ff_dim: FF-k (``max``: the largest dim); efficient: refused (no classifier).
        temperature: ``tau``; symmetric: both directions; n_dims_per_step: prefixes per step.
        ks: recall cut-offs; knn_neighbors, knn_T: the kNN vote (DINO: 20, 0.07).
        text_lr_scale: the text tower's learning rate is ``optim.lr`` times this (a
            pretrained text tower next to an image tower trained from scratch).
        optim: optimiser and schedule; channels_last: conv weights NHWC.
        baselines: ``truncate`` plus any of ``pca``, ``random_projection`` (module doc).
    """

    def __init__(
        self,
        model: dict[str, Any],
        text_model: dict[str, Any],
        in_chans: int,
        img_size: int,
        num_classes: int | None = None,
        embed_dim: int = 256,
        dims: Any = "auto",
        weights: Any = None,
        ff_dim: Any = None,
        efficient: bool = False,
        temperature: float = 0.07,
        symmetric: bool = True,
        n_dims_per_step: int | None = None,
        ks: list[int] | tuple[int, ...] = DEFAULT_KS,
        knn_neighbors: int = 20,
        knn_T: float = 0.07,
        text_lr_scale: float = 1.0,
        optim: dict[str, Any] | None = None,
        channels_last: bool = False,
        baselines: list[str] | tuple[str, ...] = ("truncate",),
    ) -> None:
        super().__init__()
        if efficient:
            raise MRLError(
                "objective=image_text has no classifier heads: mrl.efficient (MRL-E) applies "
                "to objective=classification only; use method=mrl or method=ff"
            )
        self.save_hyperparameters()
        self.channels_last = bool(channels_last)
        embed_dim = positive_int(embed_dim, "objective.embed_dim")
        nested = parse_dims(dims, embed_dim)
        if nested[-1] > embed_dim:
            raise MRLError(
                f"max(mrl.dims)={nested[-1]} exceeds objective.embed_dim={embed_dim}; use dims "
                f"up to {embed_dim} or a larger embed_dim"
            )
        if ff_dim is not None:
            ff_dim = nested[-1] if ff_dim in ("max", "auto") else ff_dim
            ff_dim = integer(ff_dim, "mrl.ff_dim", min=1, max=embed_dim, hint="or 'max'")
            self.dims = [ff_dim]
            self.eval_dims = [m for m in nested if m < ff_dim] + [ff_dim]
            self.method = f"FF-{ff_dim}"
            width = ff_dim
        else:
            self.dims = self.eval_dims = nested
            self.method = "MRL"
            width = embed_dim
        image = build_backbone(model, in_chans, img_size)
        text = build_text_encoder(text_model)
        self.net = DualEncoder(image, text, width)
        w = parse_weights(weights, self.dims) if ff_dim is None else [1.0]
        self.prefix_weights = dict(zip(self.dims, w, strict=True))
        if n_dims_per_step is not None:
            n_dims_per_step = integer(n_dims_per_step, "objective.n_dims_per_step", min=1)
        self.n_dims_per_step = n_dims_per_step
        self.loss_fn = NestedInfoNCE(self.dims, temperature, symmetric)
        self.ks = tuple(sorted({int(k) for k in ks}))
        self.knn_neighbors = positive_int(knn_neighbors, "objective.knn_neighbors")
        self.knn_T = float(knn_T)
        self.text_lr_scale = number(text_lr_scale, "objective.text_lr_scale")
        self.num_classes = None if num_classes is None else int(num_classes)
        self.optim_cfg = optim_settings(optim)
        self.report_metrics = ("i2t_R@1", "t2i_R@1", "zeroshot_top1", "knn_top1")
        self.baselines = check_baselines(baselines, "objective.baselines", BASELINES)
        self._eval: dict[str, list] = {}

    # ------------------------------------------------------------------ forward
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Full-width, unnormalised image embeddings."""
        return self.net.embed_images(x)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.embed_images(x)

    @torch.no_grad()
    def embed_texts(self, texts: list[str], batch_size: int = 256) -> np.ndarray:
        """Full-width, unnormalised float32 text embeddings (the module's current mode)."""
        out = [
            self.net.embed_texts(texts[i : i + batch_size]).float().cpu()
            for i in range(0, len(texts), batch_size)
        ]
        return torch.cat(out).numpy()

    def setup(self, stage: str) -> None:
        """Give the data the text tower's tokenizer; refuse several processes."""
        if self._trainer is not None and self.trainer.world_size > 1:
            raise MRLError(
                f"objective=image_text evaluates in one process, but the trainer runs "
                f"{self.trainer.world_size}; use trainer.devices=1 trainer.num_nodes=1"
            )
        dm = self._datamodule()
        if dm is not None and hasattr(dm, "set_tokenizer"):
            dm.set_tokenizer(self.net.text.tokenizer_fn())

    def _datamodule(self) -> Any:
        return getattr(self.trainer, "datamodule", None) if self._trainer is not None else None

    # ------------------------------------------------------------------ training
    def step_dims(self) -> list[int]:
        return draw_prefixes(self.dims, self.n_dims_per_step)

    def prefix_losses(self, batch: dict[str, Any]) -> dict[int, torch.Tensor]:
        img = self.net.embed_images(batch["image"])  # once per batch, sliced per prefix
        txt = self.net.embed_texts(batch["text"])
        return self.loss_fn(img, txt, self.step_dims())

    def configure_optimizers(self):
        """:mod:`mrl.objectives.optim`'s optimiser and schedule; the text tower's groups at
        ``lr * text_lr_scale``."""
        opt = make_optimizer(self, self.optim_cfg)
        scale_lr(opt, self.net.text.parameters(), self.text_lr_scale)
        return with_schedule(opt, self.optim_cfg, self.trainer)

    # ------------------------------------------------------------------ evaluation
    def _eval_start(self) -> None:
        self._eval = {"x": [], "group": [], "label": []}

    def on_validation_epoch_start(self) -> None:
        self._eval_start()

    def on_test_epoch_start(self) -> None:
        self._eval_start()

    def _eval_step(self, batch: dict[str, Any]) -> None:
        self._eval["x"].append(self.net.embed_images(batch["image"]).float().cpu())
        self._eval["group"].append(batch["group"].cpu())
        self._eval["label"].append(batch["label"].cpu())

    def validation_step(self, batch, batch_idx):
        self._eval_step(batch)

    def test_step(self, batch, batch_idx):
        self._eval_step(batch)

    @torch.no_grad()
    def embed_loader(self, loader) -> tuple[np.ndarray, np.ndarray]:
        """Image embeddings and labels of an evaluation loader."""
        xs, ys = [], []
        for batch in loader:
            xs.append(self.net.embed_images(batch["image"].to(self.device)).float().cpu())
            ys.append(batch["label"])
        return torch.cat(xs).numpy(), torch.cat(ys).numpy()

    def evaluate(
        self, stage: str, x: np.ndarray, group: np.ndarray, label: np.ndarray, dm: Any
    ) -> dict[str, float]:
        """Every metric of a split's image embeddings ``x`` (see the module doc)."""
        pre = f"{stage}/"
        texts, text_group = dm.eval_texts(stage)
        keep = np.isin(text_group, group)  # captions of images seen (limit_*_batches)
        texts = [t for t, k in zip(texts, keep, strict=True) if k]
        emb = {"image": x, "text": self.embed_texts(texts)}
        labelled = self.num_classes is not None and (label >= 0).all()
        prompts = dm.class_prompts() if hasattr(dm, "class_prompts") else None
        if labelled and prompts is not None:
            emb["prompt"] = self.embed_texts(prompts[0])
        extra = [b for b in self.baselines if b != "truncate"] if stage == "test" else []
        if stage == "test" and (labelled or extra):
            emb["train"], train_y = self.embed_loader(dm.train_eval_dataloader())
        out = {}
        for b in ["truncate", *extra]:
            e = emb if b == "truncate" else self._transformed(b, emb)
            suffix = "" if b == "truncate" else f"/{b}"
            dims = [m for m in self.eval_dims if m <= e["image"].shape[1]]
            part = cross_modal_recall(
                e["image"], e["text"], group, text_group[keep], dims, self.ks, pre
            )
            if "prompt" in e:
                part.update(
                    zero_shot_top1(
                        e["image"],
                        label,
                        e["prompt"],
                        prompts[1],
                        self.num_classes,
                        dims,
                        pre,
                    )
                )
            if labelled and stage == "test":
                part.update(
                    knn_topk(
                        e["train"],
                        train_y,
                        e["image"],
                        label,
                        self.num_classes,
                        dims,
                        (1, 5),
                        self.knn_neighbors,
                        self.knn_T,
                        pre,
                    )
                )
            out.update({k + suffix: v for k, v in part.items()})
        return out

    @staticmethod
    def _transformed(baseline: str, emb: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """``emb`` under ``baseline``, fitted on ``emb["train"]`` (the training images) only."""
        names = [k for k in emb if k != "train"]
        rows = np.cumsum([0] + [len(emb[k]) for k in names])
        train, rest = baseline_transform(
            baseline, emb["train"], np.vstack([emb[k] for k in names]), emb["train"].shape[1]
        )
        out = {k: rest[a:b] for k, a, b in zip(names, rows[:-1], rows[1:], strict=True)}
        return {**out, "train": train}

    def _eval_end(self, stage: str) -> None:
        if not self._eval.get("x"):
            return
        x = torch.cat(self._eval["x"]).numpy()
        group = torch.cat(self._eval["group"]).numpy()
        label = torch.cat(self._eval["label"]).numpy()
        self._eval = {}
        metrics = self.evaluate(stage, x, group, label, self._datamodule())
        for k, v in metrics.items():
            self.log(k, v, on_step=False, on_epoch=True)
        key = f"{stage}/i2t_R@{self.ks[0]}"
        self.log(key, metrics[f"{key}@d{self.eval_dims[-1]}"], prog_bar=True)

    def on_validation_epoch_end(self) -> None:
        self._eval_end("val")

    def on_test_epoch_end(self) -> None:
        self._eval_end("test")
