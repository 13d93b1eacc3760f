"""The optimiser and learning-rate schedule every objective uses.

``optim`` is a plain dict (saved in the checkpoint's hyper-parameters): ``name`` (sgd | adamw),
``lr``, ``momentum``, ``nesterov``, ``betas``, ``weight_decay``, ``no_decay_norm_bias`` (no
weight decay on norm layers and biases: timm's ``param_groups_weight_decay``), ``warmup_epochs``
(per-step linear warm-up) and ``schedule`` (after warm-up: ``linear`` decay to 0, ``cosine``
or ``constant``). Missing keys take :data:`SGD_RECIPE`, the recipe of ``conf/optim/sgd.yaml``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import torch
from timm.optim import param_groups_weight_decay

from mrl.core.errors import MRLError
from mrl.core.validate import is_number

OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("linear", "cosine", "constant")

#: SGD with momentum 0.9, weight decay 5e-4 except on norm layers and biases, half an epoch of
#: per-step linear warm-up, then linear decay to 0 (the paper's ResNet-50 schedule).
SGD_RECIPE: dict[str, Any] = {
    "name": "sgd",
    "lr": 0.1,
    "momentum": 0.9,
    "nesterov": False,
    "betas": (0.9, 0.999),
    "weight_decay": 5e-4,
    "no_decay_norm_bias": True,
    "warmup_epochs": 0.5,
    "schedule": "linear",
}


def optim_settings(optim: Mapping[str, Any] | None) -> dict[str, Any]:
    """``optim`` over :data:`SGD_RECIPE`, checked (one-line :class:`MRLError`)."""
    cfg = {**SGD_RECIPE, **dict(optim or {})}
    if cfg["name"] not in OPTIMIZERS:
        raise MRLError(f"optim.name={cfg['name']!r} is not one of {list(OPTIMIZERS)}")
    if cfg["schedule"] not in SCHEDULES:
        raise MRLError(f"optim.schedule={cfg['schedule']!r} is not one of {list(SCHEDULES)}")
    lr = cfg["lr"]
    if not is_number(lr) or not 0 < lr < math.inf:
        raise MRLError(f"optim.lr={lr!r} must be a positive number")
    for key in ("weight_decay", "warmup_epochs", "momentum"):
        v = cfg[key]
        if not is_number(v) or not 0 <= float(v) < math.inf:
            raise MRLError(f"optim.{key}={v!r} must be a number >= 0")
    return cfg


def configure_optimizers(module: torch.nn.Module, cfg: Mapping[str, Any], trainer) -> dict:
    """Lightning's ``configure_optimizers`` value: the optimiser and a per-step schedule."""
    wd = float(cfg["weight_decay"])
    if cfg["no_decay_norm_bias"]:
        groups = param_groups_weight_decay(module, weight_decay=wd)
    else:
        groups = [
            {"params": [p for p in module.parameters() if p.requires_grad], "weight_decay": wd}
        ]
    if cfg["name"] == "sgd":
        momentum = float(cfg["momentum"])
        opt = torch.optim.SGD(
            groups, lr=cfg["lr"], momentum=momentum, nesterov=bool(cfg["nesterov"]) and momentum > 0
        )
    else:
        opt = torch.optim.AdamW(groups, lr=cfg["lr"], betas=tuple(cfg["betas"]))
    total = max(1, int(trainer.estimated_stepping_batches))
    steps_per_epoch = total / max(1, trainer.max_epochs or 1)
    warmup = int(round(float(cfg["warmup_epochs"]) * steps_per_epoch))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(cfg["schedule"], warmup, total))
    return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def lr_lambda(schedule: str, warmup: int, total: int) -> Callable[[int], float]:
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
