"""Random-feature baselines of the MRL paper (Kusupati et al., 2022): "Rand. LP", "Rand. FS".

Table 1, "Rand. LP" (linear classification)
-------------------------------------------
The paper: "Rand. LP: a linear probe on k randomly chosen features of FF-max's
representation". Here the k features are :func:`random_feature_indices` ``(d, k, seed)``:
the first k entries of one seeded permutation of ``0..d-1``, returned sorted. The subsets
are therefore *nested* (the features chosen for k are among those chosen for every larger
k) and each is, on its own, a uniformly random k-subset drawn without replacement. The
probe is :func:`mrl.eval.probe.linear_probe` (logistic regression on train-standardised
raw features, Adam, cosine decay) run on the selected columns, so Rand. LP and the MRL
probes share one optimiser and one set of defaults. Deviation from the paper: the paper
trains its probes with its own (unpublished in detail) recipe; only the choice of
features follows its definition.

Table 2, "Rand. FS" (1-NN)
--------------------------
The paper's "Rand. FS" for 1-NN is simply the first k features of FF-max, i.e. FF-max's
embedding *truncated* to k dims (an FF model is not trained to order its features, so
its first k are as good as any k). :func:`rand_fs_1nn` slices, L2-normalises and runs
exact 1-NN (:func:`mrl.eval.search.prefix_neighbors`, database = train, queries = test).

Sizes larger than the representation width d are reported as ``None`` (missing).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from mrl.baselines._common import missing, num_classes_of, split_sizes
from mrl.core.errors import MRLError
from mrl.core.validate import as_labels, as_matrix, as_sizes, positive_int, seed_int


def _permutation(d: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).permutation(d)


def random_feature_indices(d: int, k: int, seed: int = 0) -> np.ndarray:
    """``k`` distinct feature indices out of ``0..d-1``, seeded, sorted increasingly.

    The first ``k`` entries of ``numpy.random.default_rng(seed).permutation(d)``, sorted:
    the same ``(d, k, seed)`` always gives the same indices, and for a fixed ``(d, seed)``
    the indices for ``k`` are a subset of those for any larger ``k``.
    """
    d = positive_int(d, "d")
    k = positive_int(k, "k")
    seed = seed_int(seed)
    if k > d:
        raise MRLError(f"k={k} random features cannot be chosen from d={d}; use k <= {d}")
    return np.sort(_permutation(d, seed)[:k]).astype(np.int64)


def _check_pair(train_x: Any, train_y: Any, test_x: Any, test_y: Any):
    train = as_matrix(train_x, "train_x")
    test = as_matrix(test_x, "test_x")
    if test.shape[1] != train.shape[1]:
        raise MRLError(f"test_x has width {test.shape[1]} but train_x has {train.shape[1]}")
    return (
        train,
        as_labels(train_y, len(train), "train_y"),
        test,
        as_labels(test_y, len(test), "test_y"),
    )


def rand_lp(
    train_x: Any,
    train_y: Any,
    test_x: Any,
    test_y: Any,
    dims: Sequence[int],
    num_classes: int,
    seed: int = 0,
    **probe_kwargs: Any,
) -> dict[int, float | None]:
    """Rand. LP: linear-probe top-1 on ``k`` random features of FF-max's representation.

    Args:
        train_x, train_y: ``(n_train, d)`` FF-max train embeddings and labels.
        test_x, test_y: ``(n_test, d)`` test embeddings and labels.
        dims: representation sizes ``k``.
        num_classes: number of classes.
        seed: picks the features (:func:`random_feature_indices`) and seeds the probes.
        **probe_kwargs: passed to :func:`mrl.eval.probe.linear_probe` (``epochs``, ``lr``,
            ``weight_decay``, ``batch_size``).

    Returns:
        ``{k: test accuracy in [0, 1]}``; ``None`` for ``k > d``.

    All probes train in one :func:`linear_probe` call: the columns are reordered by the
    seeded permutation, so the prefix of size k of the reordered matrix holds exactly the
    features ``random_feature_indices(d, k, seed)`` (column order does not matter to a
    linear probe on standardised features).
    """
    from mrl.eval.probe import linear_probe

    train, train_y, test, test_y = _check_pair(train_x, train_y, test_x, test_y)
    dims = as_sizes(dims, "dims")
    seed = seed_int(seed)
    ok, too_big = split_sizes(dims, train.shape[1])
    out: dict[int, float | None] = {}
    if ok:
        cols = _permutation(train.shape[1], seed)[: ok[-1]]
        acc = linear_probe(
            np.ascontiguousarray(train[:, cols]),
            train_y,
            np.ascontiguousarray(test[:, cols]),
            test_y,
            ok,
            num_classes,
            seed=seed,
            **probe_kwargs,
        )
        out = {k: acc[f"probe/top1@d{k}"] for k in ok}
    return {**out, **missing(too_big)}


def rand_fs_1nn(
    train_x: Any,
    train_y: Any,
    test_x: Any,
    test_y: Any,
    dims: Sequence[int],
    use_gpu: bool | None = None,
) -> dict[int, float | None]:
    """Rand. FS (Table 2): 1-NN accuracy on the first ``k`` features of FF-max.

    Database = ``train_x``, queries = ``test_x``; each is truncated to k dims, then
    L2-normalised, and searched exactly by cosine (:func:`mrl.eval.search.prefix_neighbors`,
    :func:`mrl.eval.knn.knn_metrics` with ``k=1``). Returns ``{k: accuracy}``, ``None`` for
    ``k > d``.
    """
    from mrl.eval.knn import knn_metrics
    from mrl.eval.search import prefix_neighbors

    train, train_y, test, test_y = _check_pair(train_x, train_y, test_x, test_y)
    dims = as_sizes(dims, "dims")
    ok, too_big = split_sizes(dims, train.shape[1])
    out: dict[int, float | None] = {}
    if ok:
        neighbors = prefix_neighbors(train, test, ok, k=1, use_gpu=use_gpu)
        acc = knn_metrics(neighbors, train_y, test_y, num_classes_of(train_y, test_y), k=1)
        out = {k: acc[f"knn/top1@d{k}"] for k in ok}
    return {**out, **missing(too_big)}
