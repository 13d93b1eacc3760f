"""Few-shot accuracy by nearest class mean over n-way k-shot episodes, at every prefix.

Conventions
-----------
* An episode draws ``n`` classes, then ``k`` support items per class from the *train* set
  and ``q`` query items per class from the *test* set (without replacement).
* For prefix ``m``: each support vector is sliced and L2-normalised
  (``truncate(x, m, normalize=True)``), the class mean is taken and normalised again; each
  query (sliced, normalised) gets the class of the most cosine-similar mean (ties: first).
* Accuracy is averaged over queries in an episode, then over episodes; a fraction in [0, 1].
* The episodes of one ``(n, k)`` setting are drawn once from ``default_rng([seed, n, k])``
  and shared by every prefix, so prefixes are compared on identical episodes.
* Keys: ``fewshot/{n}way{k}shot@d{m}``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from mrl.core.errors import MRLError
from mrl.core.nesting import truncate
from mrl.core.validate import as_labels, as_matrix, positive_int
from mrl.eval._checks import prefix_dims
from mrl.eval.registry import EvalData, Evaluator

_BLOCK_FLOATS = 1 << 24  # gathered features per block of episodes (64 MiB of float32)


def _int_list(value: int | Sequence[int], name: str) -> list[int]:
    items = [value] if isinstance(value, (int, np.integer)) else list(value)
    if not items:
        raise MRLError(f"{name}={value!r} is empty; give positive integers")
    return [positive_int(v, name) for v in items]


def group_by_class(y: np.ndarray, classes: np.ndarray) -> dict[int, np.ndarray]:
    """``{c: rows of y equal to c}`` for each ``c`` in ``classes`` (one sort, not one scan each)."""
    order = np.argsort(y, kind="stable")
    lo = np.searchsorted(y[order], classes, side="left")
    hi = np.searchsorted(y[order], classes, side="right")
    return {int(c): order[a:b] for c, a, b in zip(classes, lo, hi, strict=True)}


def sample_episodes(
    by_train: dict[int, np.ndarray],
    by_test: dict[int, np.ndarray],
    ways: int,
    shots: int,
    queries_per_class: int,
    episodes: int,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """Draw episodes: support ``(E, n, k)`` train rows and query ``(E, n, q)`` test rows.

    ``by_train`` / ``by_test`` map each pool class to its rows (:func:`group_by_class`).
    Class order inside an episode defines the episode-local labels ``0..n-1``.
    """
    classes = np.array(sorted(by_train))
    support = np.empty((episodes, ways, shots), dtype=np.int64)
    query = np.empty((episodes, ways, queries_per_class), dtype=np.int64)
    for e in range(episodes):
        for i, c in enumerate(rng.choice(classes, ways, replace=False)):
            support[e, i] = rng.choice(by_train[int(c)], shots, replace=False)
            query[e, i] = rng.choice(by_test[int(c)], queries_per_class, replace=False)
    return support, query


def ncm_accuracy(support: np.ndarray, query: np.ndarray) -> np.ndarray:
    """Nearest-class-mean accuracy per episode.

    Args:
        support: ``(E, n, k, m)`` L2-normalised support vectors.
        query: ``(E, n, q, m)`` L2-normalised query vectors, query ``[e, i]`` of class ``i``.

    Returns:
        ``(E,)`` accuracies; class means are re-normalised, prediction by cosine argmax.
    """
    e, n, q, m = query.shape
    means = truncate(support.mean(axis=2), m, normalize=True)  # (E, n, m)
    scores = np.matmul(query.reshape(e, n * q, m), means.transpose(0, 2, 1))
    pred = scores.argmax(axis=2).reshape(e, n, q)
    return (pred == np.arange(n)[None, :, None]).mean(axis=(1, 2))


def fewshot_metrics(
    train_x: np.ndarray,
    train_y: np.ndarray,
    test_x: np.ndarray,
    test_y: np.ndarray,
    dims: Sequence[int],
    ways: int | Sequence[int] | None = None,
    shots: int | Sequence[int] = (1, 5),
    episodes: int = 200,
    queries_per_class: int = 15,
    seed: int = 0,
    classes: Sequence[int] | None = None,
) -> dict[str, float]:
    """Mean n-way k-shot nearest-class-mean accuracy for every prefix in ``dims``.

    Args:
        train_x, train_y: support pool (embeddings ``(n_train, d)`` and labels).
        test_x, test_y: query pool.
        dims: prefix sizes.
        ways: classes per episode; ``None`` uses every class of the pool (one int or several).
        shots: support items per class (one int or several).
        episodes: episodes per ``(ways, shots)`` setting.
        queries_per_class: query items per class and episode.
        seed: seeds the episode sampler.
        classes: restrict the pool to these labels (e.g. held-out classes); default: every
            label in ``train_y``.

    Returns:
        ``{"fewshot/{n}way{k}shot@d{m}": accuracy}``.

    Raises:
        MRLError: ``n`` larger than the pool, or a pool class with fewer than ``max(shots)``
            train items or ``queries_per_class`` test items.
    """
    train_x, test_x = as_matrix(train_x, "train_x"), as_matrix(test_x, "test_x")
    if train_x.shape[1] != test_x.shape[1]:
        raise MRLError(f"test_x has width {test_x.shape[1]} but train_x has {train_x.shape[1]}")
    train_y = as_labels(train_y, len(train_x), "train_y")
    test_y = as_labels(test_y, len(test_x), "test_y")
    dims = prefix_dims(dims, train_x.shape[1])
    shots = _int_list(shots, "shots")
    episodes = positive_int(episodes, "episodes")
    queries_per_class = positive_int(queries_per_class, "queries_per_class")
    pool = np.unique(train_y if classes is None else np.asarray(list(classes), dtype=np.int64))
    if len(pool) < 2:
        raise MRLError(f"classes={pool.tolist()}: few-shot episodes need at least 2 classes")
    ways = [len(pool)] if ways is None else _int_list(ways, "ways")

    for n in ways:
        if n > len(pool):
            raise MRLError(
                f"ways={n} exceeds the {len(pool)} classes available; use ways <= {len(pool)}"
            )
    by_train, by_test = group_by_class(train_y, pool), group_by_class(test_y, pool)
    for c in pool:
        n_train, n_test = len(by_train[int(c)]), len(by_test[int(c)])
        if n_train < max(shots):
            raise MRLError(
                f"class {c} has {n_train} train items; {max(shots)}-shot episodes need {max(shots)}"
            )
        if n_test < queries_per_class:
            raise MRLError(
                f"class {c} has {n_test} test items but queries_per_class={queries_per_class}; "
                f"use queries_per_class <= {n_test}"
            )

    out: dict[str, float] = {}
    for n in ways:
        for k in shots:
            rng = np.random.default_rng([seed, n, k])
            support, query = sample_episodes(
                by_train, by_test, n, k, queries_per_class, episodes, rng
            )
            per_episode = n * (k + queries_per_class) * train_x.shape[1]
            block = max(1, _BLOCK_FLOATS // per_episode)
            acc = {m: [] for m in dims}
            for start in range(0, episodes, block):
                sup = train_x[support[start : start + block]]  # gather once, slice per m
                qry = test_x[query[start : start + block]]
                for m in dims:
                    acc[m].append(
                        ncm_accuracy(
                            truncate(sup, m, normalize=True), truncate(qry, m, normalize=True)
                        )
                    )
            for m in dims:
                out[f"fewshot/{n}way{k}shot@d{m}"] = float(np.concatenate(acc[m]).mean())
    return out


class FewShot(Evaluator):
    """``fewshot/{n}way{k}shot@d{m}``; with ``heldout_classes`` also ``fewshot_heldout/...``
    on episodes drawn from those classes only."""

    def __init__(self, heldout_classes: Sequence[int] | None = None, **settings: Any) -> None:
        self.heldout_classes = list(heldout_classes) if heldout_classes else None
        if "shots" in settings:
            settings["shots"] = tuple(settings["shots"])
        self.settings = settings

    def main_metrics(self, metrics) -> list[str]:
        return sorted({k.split("@d")[0] for k in metrics if k.startswith("fewshot/")})[:2]

    def __call__(self, data: EvalData, dims: Sequence[int]) -> dict[str, float]:
        args = (data.train_x, data.train_y, data.test_x, data.test_y, dims)
        out = fewshot_metrics(*args, **self.settings)
        if self.heldout_classes:
            held = fewshot_metrics(*args, **self.settings, classes=self.heldout_classes)
            out |= {k.replace("fewshot/", "fewshot_heldout/"): v for k, v in held.items()}
        return out
