"""The evaluator registry: an evaluator is one class plus one config file.

``conf/eval/<name>.yaml`` holds ``<name>: {_target_: <its class>, <settings>}``; its settings
live there only. ``eval.py eval=[knn,retrieval]`` and the training callback
(``train.py callbacks=eval eval=[knn]``) compose the same files and instantiate the same
classes, so both give the same metrics for the same embeddings. Adding an evaluator: write a
subclass of :class:`Evaluator` (any importable module) and ``conf/eval/<name>.yaml`` naming
it; nothing else changes (``hydra.searchpath=[file:///my/conf]`` finds a config outside
this repository).

Conventions: every evaluator reads one :class:`EvalData` (one embedding pass: full-width
float32 arrays, *not* normalised; database = train, queries = test, calibration = val) and
returns a flat ``{metric: value}`` dict, fractions in [0, 1] for accuracies, keys ending in
``@d{m}`` for prefix size ``m``. Exact neighbours are searched once, at the largest ``k``
any selected evaluator asks for, and shared.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from mrl.core.errors import MRLError

#: per-prefix logits of a model's trained heads: ``heads(z) -> {m: (n, C) logits}``
Heads = Callable[[np.ndarray], dict[int, np.ndarray]]


@dataclass
class EvalData:
    """The arrays every evaluator reads (one embedding pass per split).

    ``heads`` is absent when only embeddings are given (no trained model); ``val_*`` are
    absent when the data has no validation split. ``neighbors`` is filled by
    :func:`run_evaluators`: ``{m: (scores, ids)}`` of the test queries in the train database.
    """

    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    num_classes: int
    val_x: np.ndarray | None = None
    val_y: np.ndarray | None = None
    heads: Heads | None = None
    neighbors: dict[int, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    _logits: dict[str, dict[int, np.ndarray]] = field(default_factory=dict, repr=False)

    @classmethod
    def from_arrays(
        cls, arrays: Mapping[str, np.ndarray], num_classes: int | None = None, heads=None
    ) -> EvalData:
        """From ``{train,val,test}_{x,y}`` arrays; ``num_classes`` defaults to max label + 1."""
        for k in ("train_x", "train_y", "test_x", "test_y"):
            if k not in arrays:
                raise MRLError(f"embeddings lack array {k!r}; they have {sorted(arrays)}")
        if num_classes is None:
            num_classes = int(max(arrays["train_y"].max(), arrays["test_y"].max()) + 1)
        return cls(
            arrays["train_x"],
            arrays["train_y"],
            arrays["test_x"],
            arrays["test_y"],
            int(num_classes),
            arrays.get("val_x"),
            arrays.get("val_y"),
            heads,
        )

    @property
    def width(self) -> int:
        return int(self.train_x.shape[1])

    def logits(self, split: str) -> dict[int, np.ndarray]:
        """The trained heads' per-prefix logits of ``split`` (computed once, then reused)."""
        if self.heads is None:
            raise MRLError("these embeddings come without a model's heads; give ckpt_path=...")
        if split not in self._logits:
            self._logits[split] = self.heads(getattr(self, f"{split}_x"))
        return self._logits[split]


class Evaluator:
    """One evaluation protocol. Subclasses set the class attributes they need and
    implement :meth:`__call__`; their ``__init__`` arguments are the config's settings."""

    #: the per-prefix metric plotted against the dim (``None``: nothing to plot)
    main_metric: ClassVar[str | None] = None
    #: needs the trained heads (a checkpoint, not bare embeddings)
    needs_heads: ClassVar[bool] = False
    #: needs the validation split (calibration)
    needs_val: ClassVar[bool] = False

    def neighbours_needed(self) -> int:
        """How many exact neighbours per query this evaluator reads (0: none)."""
        return 0

    def main_metrics(self, metrics: Mapping[str, float]) -> list[str]:
        """Names (without ``@d{m}``) of the curves to plot from ``metrics``."""
        return [self.main_metric] if self.main_metric else []

    def __call__(self, data: EvalData, dims: Sequence[int]) -> dict[str, float]:
        raise NotImplementedError


def build_evaluators(spec: Mapping[str, Any]) -> dict[str, Evaluator]:
    """``{name: Evaluator}`` from config nodes with ``_target_`` (or ready instances)."""
    from hydra.utils import instantiate

    out: dict[str, Evaluator] = {}
    for name, node in dict(spec or {}).items():
        ev = node
        if not isinstance(node, Evaluator):
            if not node or "_target_" not in node:
                raise MRLError(
                    f"eval.{name} has no _target_; an evaluator config names its class, e.g. "
                    f"{name}: {{_target_: mrl.eval.knn.KNN}}"
                )
            ev = instantiate(node)
        if not isinstance(ev, Evaluator):
            raise MRLError(f"eval.{name} builds a {type(ev).__name__}, not an mrl Evaluator")
        out[str(name)] = ev
    if not out:
        raise MRLError("no evaluator selected; choose some, e.g. eval=[knn,retrieval]")
    return out


def check_inputs(evaluators: Mapping[str, Evaluator], data: EvalData) -> None:
    """Refuse, before any work, evaluators whose inputs are missing (one line)."""
    no_heads = [n for n, e in evaluators.items() if e.needs_heads and data.heads is None]
    if no_heads:
        usable = [n for n, e in evaluators.items() if not e.needs_heads]
        raise MRLError(
            f"eval={no_heads} need a model's trained heads (give ckpt_path=...); from embeddings "
            f"alone use the others{f', e.g. {usable}' if usable else ''}"
        )
    no_val = [n for n, e in evaluators.items() if e.needs_val and data.val_x is None]
    if no_val:
        raise MRLError(f"eval={no_val} need a validation split (data.val_size > 0)")


def run_evaluators(
    evaluators: Mapping[str, Evaluator], data: EvalData, dims: Sequence[int]
) -> tuple[dict[str, float], dict[str, float]]:
    """Run every evaluator on ``data`` at ``dims``; returns ``(metrics, seconds per step)``."""
    from mrl.eval.search import prefix_neighbors

    check_inputs(evaluators, data)
    out: dict[str, float] = {}
    secs: dict[str, float] = {}
    k = max((e.neighbours_needed() for e in evaluators.values()), default=0)
    if k and not data.neighbors:
        t = time.time()
        data.neighbors = prefix_neighbors(data.train_x, data.test_x, dims, k)
        secs["search"] = time.time() - t
    for name, ev in evaluators.items():
        t = time.time()
        out |= ev(data, dims)
        secs[name] = time.time() - t
    return out, secs


def main_metric_names(evaluators: Mapping[str, Evaluator], metrics: Mapping[str, float]):
    """The curves to plot: each evaluator's main per-prefix metrics, in selection order."""
    return [n for e in evaluators.values() for n in e.main_metrics(metrics)]
