"""The Slim. Net objective: a :class:`~mrl.models.slimmable.SlimmableResNet` trained at
several widths at once (``objective=slimmable``).

Training (:class:`SlimmableLitModule`)
--------------------------------------
Every step runs the batch at several widths and sums their cross-entropy losses (label
smoothing 0.1 by default, as in MRL) before one optimiser step, which is Yu et al.'s
Algorithm 1 (gradients accumulated over the switches). With more widths than
``widths_per_step`` the widths are chosen by the sandwich rule of Yu & Huang (2019,
"Universally Slimmable Networks"): the largest and the smallest width every step, plus
randomly drawn intermediate ones; with the default 4 widths and ``widths_per_step=None``
this is simply all of them. Deviations: no in-place distillation (Yu & Huang's other
training technique; the paper's baseline is the plain slimmable network) and, in one
backward pass, the autograd graphs of all sampled widths are held at once (memory ~
sum of the widths' activations; the gradients are the same as Yu et al.'s per-width
backward).

Evaluation (the paper's protocol)
---------------------------------
The MRL paper (and its official evaluation code) reads Slim. Net like MRL-E: the
*full-width* network's representation ``z`` is cut to every prefix ``m`` of the nesting
list and classified by the full-width classifier restricted to its first ``m`` input
columns, ``logits_m = W[:, :m] z[:m] + b``. That is ``forward(x) -> {m: logits_m}`` and
the logged ``{val,test}/top1@d{m}`` (and ``top5``). The narrower sub-networks, each read
whole by its own classifier, are logged beside them as ``{val,test}/subnet_top1@d{size}``
(``size`` = the width's representation size).

Other logged names: ``train/loss`` (sum over the widths), ``train/loss@d{size}`` per
width, ``{val,test}/top1`` (the full width).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.classification import MulticlassAccuracy

from mrl.core.dims import parse_dims
from mrl.core.errors import MRLError
from mrl.core.validate import positive_int
from mrl.models.slimmable import WIDTH_MULTS, SlimmableResNet, resnet_arch
from mrl.objectives.classification import NestedClassifierSteps
from mrl.objectives.nested import NestedObjective
from mrl.objectives.optim import optim_settings


# --------------------------------------------------------------------------- training
def sandwich_widths(
    width_mults: Sequence[float], n: int | None = None, generator: torch.Generator | None = None
) -> list[float]:
    """Widths for one training step by the sandwich rule (largest first).

    ``n=None`` or ``n >= len(width_mults)``: all widths (Yu et al.'s slimmable training).
    Otherwise the largest, the smallest, and ``n - 2`` intermediate widths drawn without
    replacement (Yu & Huang's sandwich rule); ``n`` must then be at least 2.
    """
    mults = sorted(width_mults, reverse=True)
    if n is None or n >= len(mults):
        return list(mults)
    if len(mults) > 1 and n < 2:
        raise MRLError(
            f"widths_per_step={n} is too small for the sandwich rule: it takes the largest and "
            "the smallest width every step; use >= 2 or null (all widths)"
        )
    middle = mults[1:-1]
    pick = torch.randperm(len(middle), generator=generator)[: n - 2].sort().values.tolist()
    return [mults[0], *[middle[i] for i in pick], mults[-1]]


class SlimmableLitModule(NestedClassifierSteps, NestedObjective):
    """Trains a :class:`SlimmableResNet` on image classification (the "Slim. Net" baseline).

    Args:
        num_classes, in_chans, img_size: taken from the datamodule.
        arch: a timm ResNet name (``model.name``): gives the block type and ``layers``
            (ResNet-18: BasicBlocks 2-2-2-2; ResNet-50: Bottlenecks 3-4-6-3, width 2048).
            None: ``layers`` with BasicBlocks.
        layers, base_width, stem_width, channels, width_mults: the network
            (:class:`SlimmableResNet`); ``channels`` follows ``model.channels``.
        dims: the nesting list read from the full-width representation (``mrl.dims``,
            the full width appended when it is not the largest); None: the widths' sizes.
        small_input_stem: True / False / ``"auto"`` (True for images < 64 px).
        widths_per_step: widths run per step (sandwich rule); None = all widths. With
            fewer than all widths, the BatchNorms of the widths left out get no gradient
            that step: under DDP use ``strategy="ddp_find_unused_parameters_true"``.
        label_smoothing: inside every width's cross-entropy (MRL: 0.1).
        optim: as :class:`mrl.objectives.classification.MRLLitModule` (``name``, ``lr``, ``momentum``,
            ``weight_decay``, ``no_decay_norm_bias``, ``warmup_epochs``, ``schedule``, ...),
            missing keys from :data:`mrl.objectives.optim.SGD_RECIPE` (SGD, lr 0.1, momentum
            0.9, weight decay 5e-4, 0.5 epoch warm-up, linear decay to 0).
        channels_last: as :class:`~mrl.objectives.classification.MRLLitModule`.

    ``forward(x)`` returns ``{size: logits}`` for every width (like the MRL module's
    ``{m: logits}``); ``self.dims`` lists the sizes.
    """

    def __init__(
        self,
        num_classes: int,
        in_chans: int,
        img_size: int,
        arch: str | None = None,
        layers: Sequence[int] | None = None,
        base_width: int = 64,
        stem_width: int | None = None,
        channels: Sequence[int] | None = None,
        dims: Any = None,
        width_mults: Sequence[float] = WIDTH_MULTS,
        small_input_stem: bool | str = "auto",
        widths_per_step: int | None = None,
        label_smoothing: float = 0.1,
        optim: dict[str, Any] | None = None,
        channels_last: bool = False,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.channels_last = bool(channels_last)
        img_size = positive_int(img_size, "img_size")
        if small_input_stem == "auto":
            small_input_stem = img_size < 64
        if not isinstance(small_input_stem, bool):
            raise MRLError(f"small_input_stem={small_input_stem!r} must be true, false or 'auto'")
        block, arch_layers = resnet_arch(arch) if arch is not None else ("basic", (2, 2, 2, 2))
        self.net = SlimmableResNet(
            layers=arch_layers if layers is None else layers,
            base_width=base_width,
            in_chans=in_chans,
            num_classes=num_classes,
            width_mults=width_mults,
            small_input_stem=small_input_stem,
            block=block,
            stem_width=stem_width,
            channels=channels,
        )
        self.sizes = self.net.representation_sizes()
        self.subnet_sizes = [self.sizes[m] for m in self.net.width_mults]
        width = self.net.num_features
        self.dims = self.subnet_sizes if dims is None else parse_dims(dims, width)
        if self.dims[-1] != width:  # the full width is always read (val/top1 selects on it)
            self.dims = [*self.dims, width]
        self.method = "Slim. Net"
        if widths_per_step is not None:
            widths_per_step = positive_int(widths_per_step, "widths_per_step")
            sandwich_widths(self.net.width_mults, widths_per_step)  # validates
        self.widths_per_step = widths_per_step
        if not 0.0 <= float(label_smoothing) < 1.0:
            raise MRLError(f"label_smoothing={label_smoothing!r} must be in [0, 1)")
        self.label_smoothing = float(label_smoothing)
        self.prefix_weights = dict.fromkeys(self.subnet_sizes, 1.0)  # widths summed unweighted
        self.optim_cfg = optim_settings(optim)
        self._topks = sorted({1, min(5, num_classes)})
        self.metrics = nn.ModuleDict(
            {
                f"{stage}_{k}_{size}": MulticlassAccuracy(num_classes, top_k=k, average="micro")
                for stage in ("val", "test")
                for k in self._topks
                for size in self.dims
            }
        )
        self.subnet_metrics = nn.ModuleDict(
            {
                f"{stage}_{size}": MulticlassAccuracy(num_classes, top_k=1, average="micro")
                for stage in ("val", "test")
                for size in self.subnet_sizes
            }
        )

    # ------------------------------------------------------------------ forward
    def forward(self, x: torch.Tensor) -> dict[int, torch.Tensor]:
        """``{m: logits}``: prefix ``m`` of the full-width representation, classified by the
        full-width classifier's first ``m`` columns (the paper's Slim. Net protocol)."""
        z = self.net.set_width(1.0).embed(x)
        w, b = self.net.fc.weight, self.net.fc.bias
        return {m: F.linear(z[:, :m], w[:, :m], b) for m in self.dims}

    def subnets(self, x: torch.Tensor) -> dict[int, torch.Tensor]:
        """``{size: logits}`` of every width's sub-network, read whole by its own classifier."""
        out = {}
        for mult in self.net.width_mults:
            out[self.sizes[mult]] = self.net.set_width(mult)(x)
        self.net.set_width(1.0)
        return out

    def _eval_step(self, batch, stage: str) -> None:
        super()._eval_step(batch, stage)
        x, y = batch
        for size, logits in self.subnets(x).items():
            metric = self.subnet_metrics[f"{stage}_{size}"]
            metric.update(logits, y)
            self.log(f"{stage}/subnet_top1@d{size}", metric, on_step=False, on_epoch=True)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Full-width pooled features."""
        return self.net.set_width(1.0).embed(x)

    # ------------------------------------------------------------------ steps
    def prefix_losses(self, batch) -> dict[int, torch.Tensor]:
        """Cross-entropy of each width run this step (the sandwich rule), keyed by its size."""
        x, y = batch
        per: dict[int, torch.Tensor] = {}
        for mult in sandwich_widths(self.net.width_mults, self.widths_per_step):
            logits = self.net.set_width(mult)(x)
            per[self.sizes[mult]] = F.cross_entropy(logits, y, label_smoothing=self.label_smoothing)
        self.net.set_width(1.0)
        return per
