"""Config -> objects, shared by the training and evaluation tasks (neither imports the other)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import hydra
from omegaconf import DictConfig

from mrl.core.errors import MRLError


def unwrap(e: BaseException) -> BaseException:
    """Hydra wraps constructor errors; the :class:`MRLError` inside, if any, else ``e``."""
    cur: BaseException | None = e
    while cur is not None:
        if isinstance(cur, MRLError):
            return cur
        cur = cur.__cause__ or cur.__context__
    return e


def instantiate(node: Any, **kwargs: Any) -> Any:
    """``hydra.utils.instantiate`` that surfaces a constructor's :class:`MRLError`."""
    try:
        return hydra.utils.instantiate(node, **kwargs)
    except hydra.errors.InstantiationException as e:
        raise unwrap(e) from e


def instantiate_all(node: DictConfig | Mapping | None, **extra: Mapping[str, Any]) -> list:
    """Every child of ``node`` that has a ``_target_`` (loggers, callbacks), in order;
    ``extra[name]`` adds keyword arguments to child ``name``."""
    if not node:
        return []
    return [
        instantiate(sub, **extra.get(name, {}))
        for name, sub in node.items()
        if sub is not None and "_target_" in sub
    ]


def close_wandb(loggers: list, exit_code: int = 0) -> None:
    """Always close the W&B run, so each job of a sweep gets its own run."""
    if any(type(lg).__name__ == "WandbLogger" for lg in loggers):
        import wandb

        if wandb.run is not None:
            wandb.finish(exit_code=exit_code)
