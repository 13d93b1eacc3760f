"""The MRL LightningModule: ``forward(x) -> {m: logits}``, one loss, metrics per prefix.

Logged names (``m`` = prefix size):
  ``train/loss`` (the weighted sum), ``train/loss@d{m}`` (unweighted CE at m),
  ``{val,test}/top1@d{m}``, ``{val,test}/top5@d{m}`` (fractions in [0, 1]) and
  ``{val,test}/top1`` (= top-1 of the largest prefix, used for checkpoint selection).
"""

from __future__ import annotations

import math
from typing import Any

import pytorch_lightning as pl
import torch
from torch import nn
from torchmetrics.classification import MulticlassAccuracy

from mrl.core.dims import parse_dims, parse_weights
from mrl.core.errors import MRLError, NonFiniteLossError
from mrl.models import Backbone, MRLModel, method_name
from mrl.objectives.nested import MatryoshkaLoss

OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("linear", "cosine", "constant")


class NestedClassifierSteps:
    """Evaluation steps and optimiser shared by every model whose forward returns
    ``{size: logits}`` (MRL, MRL-E, FF-k and the slimmable baseline).

    Needs ``self.dims``, ``self._topks``, ``self.metrics`` (``"{stage}_{k}_{m}"`` accuracy
    metrics) and ``self.optim_cfg`` (see :class:`MRLLitModule`).
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

    # ------------------------------------------------------------------ optim
    def configure_optimizers(self):
        cfg = self.optim_cfg
        decay, no_decay = [], []
        for p in self.parameters():
            if not p.requires_grad:
                continue
            if cfg["no_decay_norm_bias"] and (p.ndim <= 1):
                no_decay.append(p)  # BatchNorm/LayerNorm weights and all biases
            else:
                decay.append(p)
        groups = [
            {"params": decay, "weight_decay": cfg["weight_decay"]},
            {"params": no_decay, "weight_decay": 0.0},
        ]
        if cfg["name"] == "sgd":
            opt = torch.optim.SGD(
                groups,
                lr=cfg["lr"],
                momentum=cfg["momentum"],
                nesterov=cfg["nesterov"] and cfg["momentum"] > 0,
            )
        else:
            opt = torch.optim.AdamW(groups, lr=cfg["lr"], betas=tuple(cfg["betas"]))
        total = max(1, int(self.trainer.estimated_stepping_batches))
        steps_per_epoch = total / max(1, self.trainer.max_epochs or 1)
        warmup = int(round(cfg["warmup_epochs"] * steps_per_epoch))
        sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(cfg["schedule"], warmup, total))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


class MRLLitModule(NestedClassifierSteps, pl.LightningModule):
    """Trains a timm backbone with the Matryoshka loss.

    All arguments are plain values (saved in the checkpoint's hyper-parameters, so
    ``MRLLitModule.load_from_checkpoint(path)`` rebuilds the same network):

    Args:
        model: backbone options: ``name`` (any timm name), ``pretrained``,
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
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        model = dict(model)
        name = model.pop("name", None)
        stem = model.pop("small_input_stem", "auto")
        if stem == "auto":
            stem = img_size < 64 and "resnet" in str(name)
        backbone = Backbone(
            name, in_chans=in_chans, img_size=img_size, small_input_stem=bool(stem), **model
        )
        dims_list = parse_dims(dims, backbone.width)
        if ff_dim is not None:
            ff_dim = dims_list[-1] if ff_dim in ("max", "auto") else ff_dim
            if isinstance(ff_dim, bool) or not isinstance(ff_dim, int) or ff_dim < 1:
                raise MRLError(f"mrl.ff_dim={ff_dim!r} must be a positive integer or 'max'")
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
        self.optim_cfg = {**_DEFAULT_OPTIM, **(optim or {})}
        _validate_optim(self.optim_cfg)
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
    def training_step(self, batch, batch_idx):
        x, y = batch
        total, per = self.loss_fn(self(x), y)
        if not torch.isfinite(total):
            bad = [m for m, v in per.items() if not torch.isfinite(v)] or self.dims
            more = f" (non-finite at {len(bad)} prefixes: d{bad[0]}..d{bad[-1]})" if bad[1:] else ""
            raise NonFiniteLossError(
                f"non-finite loss {total.item()} at step {self.global_step} "
                f"(epoch {self.current_epoch}, batch {batch_idx}), prefix d{bad[0]}{more}; "
                f"lower optim.lr={self.optim_cfg['lr']} or check the data; the last good "
                "checkpoint is kept",
                step=int(self.global_step),
                prefix=int(bad[0]),
            )
        self.log("train/loss", total, prog_bar=True, on_step=True, on_epoch=True)
        for m, v in per.items():
            self.log(f"train/loss@d{m}", v, on_step=False, on_epoch=True)
        return total


_DEFAULT_OPTIM: dict[str, Any] = {
    "name": "sgd",
    "lr": 0.1,
    "momentum": 0.9,
    "nesterov": False,
    "weight_decay": 1e-4,
    "betas": (0.9, 0.999),
    "no_decay_norm_bias": True,
    "warmup_epochs": 0.0,
    "schedule": "linear",
}


def _validate_optim(cfg: dict[str, Any]) -> None:
    if cfg["name"] not in OPTIMIZERS:
        raise MRLError(f"optim.name={cfg['name']!r} is not one of {list(OPTIMIZERS)}")
    if cfg["schedule"] not in SCHEDULES:
        raise MRLError(f"optim.schedule={cfg['schedule']!r} is not one of {list(SCHEDULES)}")
    lr = cfg["lr"]
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not 0 < lr < math.inf:
        raise MRLError(f"optim.lr={lr!r} must be a positive number")
    if not 0 <= float(cfg["weight_decay"]) < math.inf:
        raise MRLError(f"optim.weight_decay={cfg['weight_decay']!r} must be >= 0")
    if not 0 <= float(cfg["warmup_epochs"]) < math.inf:
        raise MRLError(f"optim.warmup_epochs={cfg['warmup_epochs']!r} must be >= 0")


def _lr_lambda(schedule: str, warmup: int, total: int):
    """Per-step multiplier: linear warm-up to 1 over ``warmup`` steps, then the schedule."""

    def f(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        if schedule == "constant":
            return 1.0
        frac = min(1.0, (step - warmup) / max(1, total - warmup))
        if schedule == "linear":
            return max(0.0, 1.0 - frac)
        return 0.5 * (1.0 + math.cos(math.pi * frac))

    return f
