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

Precisions: ``eval.precisions: [float32, int8, binary]`` (a reserved key of the ``eval``
node, default ``[float32]``) runs the evaluators that read only the shared neighbours
(``precision_aware``: kNN and retrieval) once more per extra precision, on neighbours
searched among quantized prefixes (:mod:`mrl.eval.quantize`: slice, L2-normalise, then
quantize, int8 calibrated on the database). Their keys gain ``/{precision}`` after
``@d{m}``: ``knn/top1@d64/int8``, ``retrieval/mAP@10@d64/binary``. float32 always runs,
unsuffixed and unchanged (it is the reference of the report's retention column).
``eval.baselines: [truncate, pca, random_projection]`` likewise runs them on PCA / random
projection prefixes (:mod:`mrl.eval.baselines`), keys ``knn/top1@d64/pca[/int8]``.
Trained heads (``linear``, ``raw_precisions``) run at float16 / int8 on quantized raw test
slices: ``linear/top1@d64/int8``.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from mrl.core.errors import MRLError
from mrl.eval._checks import embedding_arrays

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
        """From ``{train,val,test}_{x,y}`` arrays; ``num_classes`` defaults to max label + 1.

        The arrays are checked first (:func:`mrl.eval._checks.embedding_arrays`: finite,
        one width, one integer label per row, labels in ``0..C-1``).
        """
        num_classes = embedding_arrays(arrays, num_classes)
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
    #: needs the model itself (it embeds data of its own in :meth:`prepare`)
    needs_model: ClassVar[bool] = False
    #: reads only ``data.neighbors`` (and labels), so it can run at every precision
    precision_aware: ClassVar[bool] = False
    #: precisions at which it reads raw, unnormalised test slices instead (trained heads:
    #: :func:`mrl.eval.quantize.quantize_raw`; the test split is quantized, logits redone)
    raw_precisions: ClassVar[tuple[str, ...]] = ()
    #: precisions to run at (set from ``eval.precisions`` by :func:`build_evaluators`);
    #: float32 always runs
    precisions: tuple[str, ...] = ("float32",)
    #: baselines to run (``eval.baselines``, :mod:`mrl.eval.baselines`); truncate always runs
    baselines: tuple[str, ...] = ("truncate",)

    def neighbours_needed(self) -> int:
        """How many exact neighbours per query this evaluator reads (0: none)."""
        return 0

    def size_problem(self, sizes: Mapping[str, int], num_classes: int, width: int) -> str | None:
        """What the split sizes (``{train, val, test}: items``), class count and embedding
        width make impossible for this evaluator, said in one line; ``None`` when nothing.
        Checked before the embedding pass (:func:`check_sizes`)."""
        return None

    def prepare(self, module: Any, dm: Any, device: Any, cache: Any) -> None:
        """Called before :meth:`__call__` when a model is evaluated (``needs_model``): the
        LightningModule, its data module, the device and the run's embedding-cache folder."""

    def main_metrics(self, metrics: Mapping[str, float]) -> list[str]:
        """Names (without ``@d{m}``) of the curves to plot from ``metrics``."""
        return [self.main_metric] if self.main_metric else []

    def __call__(self, data: EvalData, dims: Sequence[int]) -> dict[str, float]:
        raise NotImplementedError


def build_evaluators(spec: Mapping[str, Any]) -> dict[str, Evaluator]:
    """``{name: Evaluator}`` from config nodes with ``_target_`` (or ready instances).

    The reserved keys ``precisions`` (a list of :data:`mrl.eval.quantize.PRECISIONS`) and
    ``baselines`` (of :data:`mrl.eval.baselines.BASELINES`) are given to every
    ``precision_aware`` evaluator, the precisions it supports to one with
    ``raw_precisions``; the others run at float32 on the plain prefixes only.
    """
    from hydra.utils import instantiate

    from mrl.eval.baselines import check_baselines
    from mrl.eval.quantize import check_precisions

    spec = dict(spec or {})
    given = spec.pop("precisions", None)
    precisions = ["float32"] if given is None else check_precisions(_plain(given))
    given = spec.pop("baselines", None)
    baselines = ["truncate"] if given is None else check_baselines(_plain(given))
    adaptor = spec.pop("adaptor", None) or {}  # options of the adaptor baseline
    if not hasattr(adaptor, "items"):
        raise MRLError(
            f"eval.adaptor={adaptor!r} must map adaptor options to values, e.g. "
            "+eval.adaptor.epochs=40"
        )
    adaptor = {str(k): v for k, v in adaptor.items()}
    out: dict[str, Evaluator] = {}
    for name, node in spec.items():
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
        if ev.precision_aware:
            ev.precisions, ev.baselines = tuple(precisions), tuple(baselines)
            ev.baseline_options = {"adaptor": adaptor} if adaptor else {}
        elif ev.raw_precisions:
            ev.precisions = tuple(p for p in precisions if p in ("float32", *ev.raw_precisions))
        out[str(name)] = ev
    if not out:
        raise MRLError("no evaluator selected; choose some, e.g. eval=[knn,retrieval]")
    return out


def _plain(value: Any) -> Any:
    """A list for an OmegaConf ``ListConfig`` or any non-string sequence, else ``value``."""
    if isinstance(value, str) or not hasattr(value, "__iter__"):
        return value
    return list(value)


def precision_key(key: str, precision: str, baseline: str = "truncate") -> str:
    """``key`` of a metric computed at ``precision`` on ``baseline``: unchanged for float32
    and truncate, else suffixed ``/{baseline}`` then ``/{precision}``
    (``knn/top1@d64`` -> ``knn/top1@d64/int8``, ``knn/top1@d64/pca/int8``)."""
    if baseline != "truncate":
        key = f"{key}/{baseline}"
    return key if precision == "float32" else f"{key}/{precision}"


def check_inputs(evaluators: Mapping[str, Evaluator], data: EvalData) -> None:
    """Refuse, before any work, evaluators whose inputs are missing (one line)."""
    no_heads = [
        n for n, e in evaluators.items() if (e.needs_heads or e.needs_model) and data.heads is None
    ]
    if no_heads:
        usable = [n for n, e in evaluators.items() if not e.needs_heads]
        raise MRLError(
            f"eval={no_heads} need a model's trained heads (give ckpt_path=...); from embeddings "
            f"alone use the others{f', e.g. {usable}' if usable else ''}"
        )
    no_val = [n for n, e in evaluators.items() if e.needs_val and data.val_x is None]
    if no_val:
        raise MRLError(f"eval={no_val} need a validation split (data.val_size > 0)")


def check_sizes(
    evaluators: Mapping[str, Evaluator], sizes: Mapping[str, int], num_classes: int, width: int
) -> None:
    """Refuse, before any embedding pass, what the data sizes rule out (one line): more
    neighbours than database (train) items, a missing validation split, and each evaluator's
    own :meth:`Evaluator.size_problem`."""
    n = int(sizes.get("train", 0))
    for name, ev in evaluators.items():
        k = ev.neighbours_needed()
        problem = (
            f"needs k={k} neighbours per query but the database (the train split) has {n} items; "
            f"use k <= {n} or more data (data.subset)"
            if k > n
            else ev.size_problem(sizes, num_classes, width)
        )
        if problem is None and ev.needs_val and not sizes.get("val"):
            problem = "needs a validation split (data.val_size > 0)"
        if problem:
            raise MRLError(f"eval.{name} {problem}")


def run_evaluators(
    evaluators: Mapping[str, Evaluator], data: EvalData, dims: Sequence[int]
) -> tuple[dict[str, float], dict[str, float]]:
    """Run every evaluator on ``data`` at ``dims``; returns ``(metrics, seconds per step)``.

    Then the extra precisions and baselines the evaluators were given (the module's
    docstring), each under its suffixed keys.
    """
    from mrl.eval.search import prefix_neighbors

    check_inputs(evaluators, data)
    embedding_arrays(
        {k: getattr(data, k) for k in ("train_x", "train_y", "val_x", "val_y", "test_x", "test_y")},
        data.num_classes,
    )
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
    _run_raw_precisions(evaluators, data, dims, out, secs)
    _run_variants(evaluators, data, dims, out, secs)
    return out, secs


def _timed(ev: Evaluator, view: EvalData, dims, p: str, b: str, name: str, out, secs) -> None:
    t = time.time()
    out |= {precision_key(key, p, b): v for key, v in ev(view, dims).items()}
    secs[f"{name}{precision_key('', p, b)}"] = time.time() - t


def _run_raw_precisions(evaluators, data: EvalData, dims, out, secs) -> None:
    """Trained heads at float16 / int8: the test split quantized raw, logits recomputed."""
    from mrl.eval.quantize import PRECISIONS, quantize_raw

    for p in PRECISIONS[1:]:
        raw = {n: e for n, e in evaluators.items() if p in e.raw_precisions and p in e.precisions}
        if raw:
            view = copy.copy(data)
            view.test_x, view._logits = quantize_raw(data.train_x, data.test_x, p), {}
            for name, ev in raw.items():
                _timed(ev, view, dims, p, "truncate", name, out, secs)


def _run_variants(evaluators, data: EvalData, dims, out, secs) -> None:
    """Neighbour-only evaluators at every (baseline, precision) but plain float32."""
    from mrl.eval.baselines import BASELINES, baseline_transform
    from mrl.eval.quantize import PRECISIONS, quantized_neighbors

    for b in BASELINES:
        chosen = {n: e for n, e in evaluators.items() if e.precision_aware and b in e.baselines}
        if not chosen:
            continue
        train_x, test_x, b_dims = data.train_x, data.test_x, list(dims)
        if b != "truncate":
            t = time.time()
            options = getattr(next(iter(chosen.values())), "baseline_options", {}).get(b)
            train_x, test_x = baseline_transform(b, train_x, test_x, max(dims), options)
            b_dims = [m for m in dims if m <= train_x.shape[1]]  # PCA: <= n_train components
            secs[f"fit/{b}"] = time.time() - t
        for p in PRECISIONS[1:] if b == "truncate" else PRECISIONS:
            users = {n: e for n, e in chosen.items() if p in e.precisions or p == "float32"}
            if not users or not b_dims:
                continue
            view = copy.copy(data)
            view.train_x, view.test_x = train_x, test_x
            k_p = max(e.neighbours_needed() for e in users.values())
            if k_p:
                t = time.time()
                view.neighbors = quantized_neighbors(train_x, test_x, b_dims, k_p, p)
                secs[f"search{precision_key('', p, b)}"] = time.time() - t
            for name, ev in users.items():
                _timed(ev, view, b_dims, p, b, name, out, secs)


def main_metric_names(evaluators: Mapping[str, Evaluator], metrics: Mapping[str, float]):
    """The curves to plot: each evaluator's main per-prefix metrics, in selection order."""
    return [n for e in evaluators.values() for n in e.main_metrics(metrics)]
