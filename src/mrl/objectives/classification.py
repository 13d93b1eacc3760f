"""The MRL LightningModule: ``forward(x) -> {m: logits}``, one loss, metrics per prefix.

Logged names (``m`` = prefix size):
  ``train/loss`` (the weighted sum), ``train/loss@d{m}`` (unweighted CE at m),
  ``{val,test}/top1@d{m}``, ``{val,test}/top5@d{m}`` (fractions in [0, 1]) and
  ``{val,test}/top1`` (= top-1 of the largest prefix, used for checkpoint selection).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torchmetrics.classification import MulticlassAccuracy

from mrl.core.dims import parse_dims, parse_weights
from mrl.core.errors import MRLError
from mrl.core.validate import integer
from mrl.models import Backbone, MRLModel, method_name
from mrl.objectives.nested import MatryoshkaLoss, NestedObjective
from mrl.objectives.optim import optim_settings


def instantiate_model(target: str, model: dict[str, Any], **extra: Any) -> Any:
    """``target`` called with the ``model`` keys and ``extra``; any failure is one MRLError
    (an MRLError raised inside is passed on as it is)."""
    from hydra.utils import instantiate

    try:
        return instantiate({"_target_": target, **model}, **extra)
    except MRLError:
        raise
    except Exception as e:  # noqa: BLE001 - Hydra wraps the cause; keep one line
        cause = e.__cause__ if isinstance(e.__cause__, MRLError) else None
        if cause is not None:
            raise cause from None
        raise MRLError(f"model._target_={target!r} could not be built: {e}") from e


def build_backbone(model: dict[str, Any], in_chans: int, img_size: int) -> Backbone:
    """The backbone of a ``model`` config: its ``_target_`` (default :class:`Backbone`, any timm
    name) called with the other keys and the data's ``in_chans`` and ``img_size``;
    ``small_input_stem: auto`` is true for ResNets on images under 64 px. A custom class must
    keep Backbone's contract: ``forward(x) -> (B, width)``, ``width`` and ``expand_to(d)``."""

    model = dict(model)
    target = model.pop("_target_", "mrl.models.Backbone")
    model.pop("_partial_", None)
    stem = model.pop("small_input_stem", "auto")
    if stem == "auto":
        stem = img_size < 64 and "resnet" in str(model.get("name"))
    backbone = instantiate_model(
        target, model, in_chans=in_chans, img_size=img_size, small_input_stem=bool(stem)
    )
    if not all(hasattr(backbone, a) for a in ("width", "expand_to")):
        raise MRLError(
            f"model._target_={target!r} built a {type(backbone).__name__} without the Backbone "
            "contract (width, expand_to); subclass mrl.models.Backbone"
        )
    return backbone


class NestedClassifierSteps:
    """Validation and test steps shared by every model whose forward returns
    ``{size: logits}`` (MRL, MRL-E, FF-k and the slimmable baseline).

    Needs ``self.dims``, ``self._topks`` and ``self.metrics`` (``"{stage}_{k}_{m}"`` accuracy
    metrics).
    """

    def _eval_step(self, batch, stage: str) -> None:
        x, y = batch
        for m, logits in self(x).items():
            for k in self._topks:
                metric = self.metrics[f"{stage}_{k}_{m}"]
                metric.update(logits, y)
                self.log(f"{stage}/top{k}@d{m}", metric, on_step=False, on_epoch=True)
        self.log(
            f"{stage}/top1",
            self.metrics[f"{stage}_1_{self.dims[-1]}"],
            on_step=False,
            on_epoch=True,
            prog_bar=True,
        )

    def validation_step(self, batch, batch_idx):
        self._eval_step(batch, "val")

    def test_step(self, batch, batch_idx):
        self._eval_step(batch, "test")


class MRLLitModule(NestedClassifierSteps, NestedObjective):
    """Trains a timm backbone with the Matryoshka loss.

    All arguments are plain values (saved in the checkpoint's hyper-parameters, so
    ``MRLLitModule.load_from_checkpoint(path)`` rebuilds the same network):

    Args:
        model: backbone options (:func:`build_backbone`): ``_target_`` (default
            :class:`~mrl.models.Backbone`), ``name`` (any timm name), ``pretrained``,
            ``small_input_stem`` (true / false / "auto": true for images < 64 px with a
            ResNet stem), ``patch_size``, ``drop_path_rate``.
        num_classes, in_chans, img_size: taken from the datamodule.
        dims: nesting spec (``"auto"``, a list, ``[8,16,...,2048]``), see :func:`parse_dims`.
        efficient: MRL-E; ``ff_dim``: FF-k baseline; ``weights``: ``c_m`` per prefix;
        ``label_smoothing``: inside every CE term (paper 0.1).
        optim: ``name`` (sgd | adamw), ``lr``, ``weight_decay``, ``momentum``, ``nesterov``,
            ``no_decay_norm_bias`` (paper: no weight decay on BatchNorm), ``warmup_epochs``
            (per-step linear warm-up) and ``schedule`` (linear decay to 0 as the paper,
            cosine, or constant).
        channels_last: keep conv weights channels-last while fitting and testing (faster on
            x86 CPUs; see :class:`~mrl.objectives.nested.NestedObjective`).
    """

    def __init__(
        self,
        model: dict[str, Any],
        num_classes: int,
        in_chans: int,
        img_size: int,
        dims: Any = "auto",
        efficient: bool = False,
        ff_dim: int | str | None = None,
        weights: list[float] | None = None,
        label_smoothing: float = 0.1,
        optim: dict[str, Any] | None = None,
        channels_last: bool = False,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.channels_last = bool(channels_last)
        backbone = build_backbone(model, in_chans, img_size)
        self.embed_width = backbone.width  # what dims: auto stands for
        dims_list = parse_dims(dims, backbone.width)
        if ff_dim is not None:
            ff_dim = dims_list[-1] if ff_dim in ("max", "auto") else ff_dim
            ff_dim = integer(ff_dim, "mrl.ff_dim", min=1, hint="or 'max'")
            dims_list = [ff_dim]
        backbone.expand_to(dims_list[-1])
        self.net = MRLModel(backbone, dims_list, num_classes, efficient=efficient, ff_dim=ff_dim)
        self.dims = self.net.dims
        self.method = method_name(self.net.efficient, ff_dim)
        self.loss_fn = MatryoshkaLoss(
            self.dims,
            parse_weights(weights, self.dims) if ff_dim is None else None,
            label_smoothing,
        )
        self.prefix_weights = dict(zip(self.dims, self.loss_fn.weights, strict=True))
        self.optim_cfg = optim_settings(optim)
        top5 = min(5, num_classes)
        self.metrics = nn.ModuleDict(
            {
                f"{stage}_{k}_{m}": MulticlassAccuracy(num_classes, top_k=k, average="micro")
                for stage in ("val", "test")
                for k in sorted({1, top5})
                for m in self.dims
            }
        )
        self._topks = sorted({1, top5})

    # ------------------------------------------------------------------ forward
    def forward(self, x: torch.Tensor) -> dict[int, torch.Tensor]:
        return self.net(x)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.embed(x)

    # ------------------------------------------------------------------ steps
    def prefix_losses(self, batch) -> dict[int, torch.Tensor]:
        x, y = batch
        return self.loss_fn.per_prefix(self(x), y)
