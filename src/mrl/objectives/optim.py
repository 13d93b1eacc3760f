"""The optimiser and learning-rate schedule every objective uses.

``optim`` is a plain dict (saved in the checkpoint's hyper-parameters, so a checkpoint is read
without unpickling code). The optimiser is a Hydra partial: ``_target_`` names any
``torch.optim.Optimizer`` class (``torch.optim.SGD``, ``torch.optim.AdamW``, ...) and the keys
its constructor accepts (``lr``, ``momentum``, ``nesterov``, ``betas``, ``weight_decay``, ...)
are bound to it; it is completed with the parameter groups. The other keys describe the groups
and the schedule: ``no_decay_norm_bias`` (no weight decay on norm layers and biases: timm's
``param_groups_weight_decay``), ``warmup_epochs`` (per-step linear warm-up) and ``schedule``
(after warm-up: ``linear`` decay to 0, ``cosine`` or ``constant``). Missing keys take
:data:`SGD_RECIPE`, the recipe of ``conf/optim/sgd.yaml``. Checkpoints written before
``_target_`` carry ``name: sgd | adamw``, read as the same classes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from timm.optim import param_groups_weight_decay

from mrl.core.errors import MRLError
from mrl.core.validate import number

#: ``optim.name`` of older configs and checkpoints -> the class it meant
OPTIMIZERS = {"sgd": "torch.optim.SGD", "adamw": "torch.optim.AdamW"}
SCHEDULES = ("linear", "cosine", "constant")

#: SGD with momentum 0.9, weight decay 5e-4 except on norm layers and biases, half an epoch of
#: per-step linear warm-up, then linear decay to 0 (the paper's ResNet-50 schedule).
SGD_RECIPE: dict[str, Any] = {
    "_target_": "torch.optim.SGD",
    "_partial_": True,
    "lr": 0.1,
    "momentum": 0.9,
    "nesterov": False,
    "weight_decay": 5e-4,
    "no_decay_norm_bias": True,
    "warmup_epochs": 0.5,
    "schedule": "linear",
}


#: keys that shape the parameter groups and the schedule, never passed to the optimiser
SCHEDULE_KEYS = ("no_decay_norm_bias", "warmup_epochs", "schedule")


def optimizer_class(cfg: Mapping[str, Any]) -> type[torch.optim.Optimizer]:
    """The ``torch.optim.Optimizer`` class named by ``cfg["_target_"]``."""
    from hydra.utils import get_class

    target = cfg.get("_target_")
    try:
        cls = get_class(str(target))
    except Exception:  # noqa: BLE001 - any import failure is a bad name
        cls = None
    if not (isinstance(cls, type) and issubclass(cls, torch.optim.Optimizer)):
        raise MRLError(
            f"optim._target_={target!r} is not a torch optimiser class; use e.g. "
            "torch.optim.SGD, torch.optim.AdamW or torch.optim.RMSprop"
        )
    return cls


def optim_settings(optim: Mapping[str, Any] | None) -> dict[str, Any]:
    """``optim`` over :data:`SGD_RECIPE`, checked (one-line :class:`MRLError`). The recipe's
    SGD-only keys (momentum, nesterov) are not added when another optimiser is named."""
    given = {k: v for k, v in dict(optim or {}).items() if v is not None or k == "name"}
    if given.get("name") is not None and "_target_" not in given:  # older configs
        if given["name"] not in OPTIMIZERS:
            raise MRLError(f"optim.name={given['name']!r} is not one of {list(OPTIMIZERS)}")
        given["_target_"] = OPTIMIZERS[given.pop("name")]
    given.pop("name", None)
    base = dict(SGD_RECIPE)
    if given.get("_target_", SGD_RECIPE["_target_"]) != SGD_RECIPE["_target_"]:
        base = {k: base[k] for k in ("_target_", "_partial_", "lr", "weight_decay", *SCHEDULE_KEYS)}
    cfg = {**base, **given}
    optimizer_class(cfg)
    if cfg["schedule"] not in SCHEDULES:
        raise MRLError(f"optim.schedule={cfg['schedule']!r} is not one of {list(SCHEDULES)}")
    number(cfg["lr"], "optim.lr", positive=True)
    for key in ("weight_decay", "warmup_epochs", "momentum"):
        number(cfg.get(key, 0), f"optim.{key}")
    return cfg


def make_optimizer(module: torch.nn.Module, cfg: Mapping[str, Any]) -> torch.optim.Optimizer:
    """The optimiser of ``cfg`` (a Hydra partial) over ``module``'s parameter groups."""
    from hydra.utils import instantiate

    wd = float(cfg["weight_decay"])
    if cfg["no_decay_norm_bias"]:
        groups = param_groups_weight_decay(module, weight_decay=wd)
    else:
        groups = [
            {"params": [p for p in module.parameters() if p.requires_grad], "weight_decay": wd}
        ]
    cls = optimizer_class(cfg)
    kwargs = {k: v for k, v in cfg.items() if k not in (*SCHEDULE_KEYS, "_target_", "_partial_")}
    kwargs.pop("weight_decay")  # per group
    if "momentum" in kwargs and "nesterov" in kwargs:  # torch: nesterov needs momentum > 0
        kwargs["nesterov"] = bool(kwargs["nesterov"]) and float(kwargs["momentum"]) > 0
    if "betas" in kwargs:
        kwargs["betas"] = tuple(kwargs["betas"])
    try:
        target = f"{cls.__module__}.{cls.__qualname__}"
        partial = instantiate({"_target_": target, "_partial_": True, **kwargs})
        return partial(groups)
    except TypeError as e:
        raise MRLError(f"optim: {cls.__name__} rejected the settings {sorted(kwargs)}: {e}") from e


def scale_lr(
    opt: torch.optim.Optimizer, params: Iterable[torch.nn.Parameter], scale: float
) -> torch.optim.Optimizer:
    """Move ``params`` into groups of their own at ``scale`` times their group's learning rate
    (every other setting, e.g. weight decay, kept); empty groups are dropped. Call it on a
    fresh optimiser (no state yet), before :func:`with_schedule`. Returns ``opt``."""
    if scale == 1.0:
        return opt
    chosen = {id(p) for p in params}
    groups = []
    for group in opt.param_groups:
        for moved in (False, True):
            ps = [p for p in group["params"] if (id(p) in chosen) == moved]
            if ps:
                groups.append({**group, "params": ps, "lr": group["lr"] * (scale if moved else 1)})
    opt.param_groups = []
    for group in groups:
        opt.add_param_group(group)
    return opt


def configure_optimizers(module: torch.nn.Module, cfg: Mapping[str, Any], trainer) -> dict:
    """Lightning's ``configure_optimizers`` value: the optimiser and a per-step schedule."""
    return with_schedule(make_optimizer(module, cfg), cfg, trainer)


def with_schedule(opt: torch.optim.Optimizer, cfg: Mapping[str, Any], trainer) -> dict:
    """``{"optimizer": opt, "lr_scheduler": ...}``: ``cfg``'s warm-up and schedule per step
    over the trainer's estimated steps (for objectives that regroup their optimiser first)."""
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
