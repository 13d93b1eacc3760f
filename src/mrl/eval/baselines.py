"""Baselines at every prefix size: what a plain embedding reaches at the same budget.

``eval.baselines: [truncate, pca, random_projection]`` (a reserved key of the ``eval``
node; default ``[truncate]``) runs the neighbour-only evaluators (kNN, retrieval) on
transformed embeddings whose first ``m`` dims are:

* ``truncate``: the first ``m`` dims as given (the MRL prefix; the usual, unsuffixed keys);
* ``pca``: the top ``m`` principal components, FAISS ``PCAMatrix`` fitted on the
  **database (train) rows only** (centred by their mean) and applied to both sides; at most
  ``min(width, n_train)`` components, so larger prefixes are skipped;
* ``random_projection``: ``m`` columns of one random orthonormal projection (FAISS
  ``RandomRotationMatrix``, fixed seed 0) of the full width; data-independent;
* ``adaptor``: the first ``m`` dims of a Matryoshka-Adaptor ``f(e) = e + MLP(e)``
  (:mod:`mrl.adaptor`) fitted, unsupervised, on the **database (train) rows only** (seed 0,
  :data:`ADAPTOR_OPTIONS`, overridable through ``options``) and applied to both sides; it
  keeps the width, so every prefix up to it is evaluated.

Each prefix of a baseline is then treated as any prefix (slice, L2-normalise, optionally
quantize: :mod:`mrl.eval.quantize`). Keys gain ``/{baseline}`` after ``@d{m}`` and before a
precision suffix: ``knn/top1@d64/pca``, ``knn/top1@d64/pca/int8``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import faiss
import numpy as np

from mrl.core.errors import MRLError
from mrl.core.validate import as_matrix

BASELINES = ("truncate", "pca", "random_projection", "adaptor")
SEED = 0
#: :func:`mrl.adaptor.fit_adaptor` settings of the ``adaptor`` baseline (prefixes: the
#: adaptor's defaults, powers of two from 8 plus the halvings of the width, and the width)
ADAPTOR_OPTIONS: dict[str, Any] = {
    "hidden": None,
    "epochs": 20,
    "batch_size": 128,
    "lr": 3e-3,
    "alpha": 1.0,
    "beta": 1.0,
    "gamma": 0.01,
    "k": 10,
    "seed": SEED,
    "device": "cpu",
    "threads": None,
}


def check_baselines(
    values: object, name: str = "eval.baselines", allowed: Sequence[str] = BASELINES
) -> list[str]:
    """A non-empty list of ``allowed`` (default :data:`BASELINES`), duplicates dropped, in the
    given order."""
    if isinstance(values, str) or not isinstance(values, Sequence) or not values:
        example = ",".join(allowed[:2])
        raise MRLError(f"{name}={values!r} must be a non-empty list, e.g. [{example}]")
    out: list[str] = []
    for b in values:
        if not isinstance(b, str) or b not in allowed:
            raise MRLError(f"{name}={b!r} is not a baseline; use some of {list(allowed)}")
        if b not in out:
            out.append(b)
    return out


def baseline_transform(
    name: str,
    train_x: np.ndarray,
    test_x: np.ndarray,
    max_dim: int,
    options: Mapping[str, Any] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """``(train, test)`` of baseline ``name`` with at most ``max_dim`` columns, whose first
    ``m`` columns are that baseline's ``m``-dim representation (fitted on ``train_x`` only).

    ``options``: ``adaptor`` only, keys of :data:`ADAPTOR_OPTIONS` (plus ``dims``) over
    those defaults; refused for the others."""
    check_baselines([name], "baseline")
    train_x = as_matrix(train_x, "train_x")
    test_x = as_matrix(test_x, "test_x")
    width = train_x.shape[1]
    d_out = min(width, int(max_dim))
    if options and name != "adaptor":
        raise MRLError(f"baseline {name!r} takes no options, got {dict(options)}")
    if name == "truncate":
        return train_x[:, :d_out], test_x[:, :d_out]
    if name == "adaptor":
        return _adaptor(train_x, test_x, d_out, options)
    if name == "pca":
        d_out = min(d_out, len(train_x))
        transform = faiss.PCAMatrix(width, d_out)
        transform.train(train_x)  # the database rows only
    else:
        transform = faiss.RandomRotationMatrix(width, d_out)
        transform.init(SEED)
    return transform.apply(train_x), transform.apply(test_x)


def _adaptor(
    train_x: np.ndarray, test_x: np.ndarray, d_out: int, options: Mapping[str, Any] | None
) -> tuple[np.ndarray, np.ndarray]:
    from mrl.adaptor import fit_adaptor

    opts = dict(ADAPTOR_OPTIONS)
    for key, value in dict(options or {}).items():
        if key not in (*ADAPTOR_OPTIONS, "dims", "weights", "distance", "weight_decay"):
            raise MRLError(
                f"adaptor option {key!r} is not one of "
                f"{[*ADAPTOR_OPTIONS, 'dims', 'weights', 'distance', 'weight_decay']}"
            )
        opts[key] = value
    adaptor = fit_adaptor(train_x, **opts)  # the database rows only
    return adaptor.apply(train_x)[:, :d_out], adaptor.apply(test_x)[:, :d_out]
