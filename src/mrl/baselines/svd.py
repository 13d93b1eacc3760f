"""SVD baselines of the MRL paper (Kusupati et al., 2022): Table 1 "SVD", Table 2 "FF+SVD".

Table 1, "SVD" (linear classification)
--------------------------------------
The paper: "SVD: low-rank (rank k) approximation of FF-max's classification layer".
FF-max's classifier ``logits = W z + b`` (``W``: ``C x d``) is factorised as
``W = U S V^T`` (thin SVD, ``r = min(C, d)`` singular triplets, in decreasing order). The
rank-k baseline keeps the top-k triplets (the best rank-k approximation of ``W`` in the
Frobenius and spectral norms, Eckart-Young):

* the k-dim representation is ``V_k^T z`` (``A = V_k^T``, a ``k x d`` projection);
* the classifier on it is ``W_k = U_k S_k`` (``C x k``), with FF-max's full bias ``b``:
  ``logits_k = U_k S_k (V_k^T z) + b``.

Rank limit: ``W`` has rank at most ``r = min(C, d)``. At ``k = r`` the factorisation
reproduces ``W`` and the accuracy equals FF-max's (:func:`ff_top1`; both computed in float64
so that float rounding cannot flip an argmax between the two). A size ``r < k <= d`` has no
further singular direction to add: as in the official code (which evaluates ranks up to 1024
with 1000 classes), it is the full-rank classifier ``W`` itself, and the tables mark it as
such. Only ``k > d`` (wider than the representation) is ``None``.

Table 2, "FF+SVD" (1-NN)
------------------------
The paper: "FF+SVD: SVD of FF-max's features". Convention used here: the *uncentred*
train feature matrix ``X`` (``n x d``, FF-max's full embeddings, one row per train item)
is factorised ``X = U S V^T``; train and test features are both projected onto the top-k
right singular vectors, ``x -> V_k^T x`` (test items use the train basis; nothing is fitted
on test data). Because the singular vectors are ordered by singular value, the k-dim
projection is the first k coordinates of the ``r``-dim projection: the projected
features are a nested embedding, and 1-NN on it follows the package's retrieval convention
(slice, then L2-normalise, exact cosine search). No centring: with centring the k=1
component would be the first principal component instead of (approximately) the mean
direction; the paper does not say which it used, so uncentred SVD, the literal reading,
is the default.
Rank limit: ``k <= min(n, d)``; larger k are ``None``.

Deviation / implementation note: for ``n > d`` the right singular vectors are computed as
the eigenvectors of the float64 Gram matrix ``X^T X`` (accumulated in row chunks, so the
ImageNet train set never needs an ``n x d`` float64 copy); the singular values are the
square roots of its eigenvalues. Directions with (near-)zero singular value are not
unique; they do not change the top directions. Each singular vector's sign is fixed so
that its largest-magnitude entry is positive (results do not depend on signs).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from torch import nn

from mrl.baselines._common import missing, num_classes_of, split_sizes
from mrl.core.errors import MRLError
from mrl.core.validate import as_labels, as_matrix, as_sizes, integer, to_numpy

_CHUNK = 8192


def _weight_and_bias(weight: Any, bias: Any) -> tuple[np.ndarray, np.ndarray]:
    """FF-max's classifier as float64 ``(W: C x d, b: C)``; ``weight`` may be an nn.Linear."""
    if isinstance(weight, nn.Linear):
        if bias is None and weight.bias is not None:
            bias = weight.bias
        weight = weight.weight
    w = as_matrix(weight, "weight", np.float64)
    if bias is None:
        b = np.zeros(w.shape[0])
    else:
        b = to_numpy(bias, "bias", np.float64)
        if b.shape != (w.shape[0],):
            raise MRLError(
                f"bias has shape {b.shape} but weight is {w.shape[0]} x {w.shape[1]} "
                f"(classes x features); expected a bias of shape ({w.shape[0]},) or None"
            )
        if not np.isfinite(b).all():
            raise MRLError("bias holds NaN or infinite values; expected finite numbers")
    return w, b


def _fix_signs(vt: np.ndarray) -> np.ndarray:
    """+1/-1 per row of ``vt`` making each row's largest-magnitude entry positive."""
    rows = np.arange(len(vt))
    signs = np.sign(vt[rows, np.abs(vt).argmax(axis=1)])
    signs[signs == 0] = 1.0
    return signs


def _classifier_svd(w: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Thin SVD ``W = U diag(S) Vt`` in float64 with deterministic signs."""
    u, s, vt = np.linalg.svd(w, full_matrices=False)
    signs = _fix_signs(vt)
    return u * signs, s, vt * signs[:, None]


def svd_classifier(
    weight: Any, bias: Any = None, ranks: Sequence[int] = (8, 16, 32, 64, 128, 256, 512)
) -> dict[int, tuple[np.ndarray, np.ndarray] | None]:
    """Rank-k factorisations of FF-max's classification layer (paper's Table 1 "SVD").

    Args:
        weight: FF-max's classifier weight ``W``, ``C x d`` (numpy, torch, or an
            ``nn.Linear``, whose bias is then used when ``bias`` is None).
        bias: ``b`` of shape ``(C,)`` or None. Only checked here: the rank-k classifier
            keeps FF-max's full bias unchanged.
        ranks: representation sizes ``k`` (strictly increasing positive ints).

    Returns:
        ``{k: (A, W_k)}`` with ``A = V_k^T`` (``k x d``, float64, orthonormal rows: the
        k-dim representation is ``A @ z``) and ``W_k = U_k S_k`` (``C x k``), so that
        ``W_k @ A`` is the best rank-k approximation of ``W``; ``None`` for
        ``k > min(C, d)`` (not representable).
    """
    w, _ = _weight_and_bias(weight, bias)
    ranks = as_sizes(ranks, "ranks")
    u, s, vt = _classifier_svd(w)
    ok, too_big = split_sizes(ranks, len(s))
    out: dict[int, tuple[np.ndarray, np.ndarray] | None] = {
        k: (vt[:k].copy(), u[:, :k] * s[:k]) for k in ok
    }
    return {**out, **missing(too_big)}


def _features_labels(features: Any, labels: Any, d: int) -> tuple[np.ndarray, np.ndarray]:
    x = as_matrix(features, "features")
    if x.shape[1] != d:
        raise MRLError(
            f"features have width {x.shape[1]} but the classifier weight expects {d}; pass "
            "FF-max's full embedding"
        )
    return x, as_labels(labels, len(x), "labels")


def ff_top1(weight: Any, bias: Any, features: Any, labels: Any) -> float:
    """Top-1 of FF-max's own classifier ``W z + b`` (float64): the reference at full rank."""
    w, b = _weight_and_bias(weight, bias)
    x, y = _features_labels(features, labels, w.shape[1])
    correct = 0
    for start in range(0, len(x), _CHUNK):
        logits = x[start : start + _CHUNK].astype(np.float64) @ w.T + b
        correct += int((logits.argmax(1) == y[start : start + _CHUNK]).sum())
    return correct / len(x)


def svd_top1(
    weight: Any,
    bias: Any,
    features: Any,
    labels: Any,
    ranks: Sequence[int] = (8, 16, 32, 64, 128, 256, 512),
) -> dict[int, float | None]:
    """Top-1 of the rank-k SVD classifier ``U_k S_k (V_k^T z) + b`` for every k.

    Args:
        weight, bias: FF-max's classifier (``C x d``, ``(C,)``; see :func:`svd_classifier`).
        features: ``(n, d)`` FF-max embeddings ``z`` (raw, unnormalised: classification
            reads the raw representation).
        labels: ``(n,)`` integer labels.
        ranks: representation sizes ``k``.

    Returns:
        ``{k: accuracy in [0, 1]}``: for ``min(C, d) <= k <= d`` the full-rank classifier's
        (equal to :func:`ff_top1` exactly: float64 logits); ``None`` for ``k > d``.
    """
    w, b = _weight_and_bias(weight, bias)
    x, y = _features_labels(features, labels, w.shape[1])
    ranks = as_sizes(ranks, "ranks")
    u, s, vt = _classifier_svd(w)
    within, too_big = split_sizes(ranks, w.shape[1])
    ok, full_rank = split_sizes(within, len(s))
    out: dict[int, float | None] = {}
    if ok:
        top = ok[-1]
        correct = dict.fromkeys(ok, 0)
        for start in range(0, len(x), _CHUNK):
            # project once onto the top-`top` directions; rank k reads the first k coords
            proj = x[start : start + _CHUNK].astype(np.float64) @ vt[:top].T
            yb = y[start : start + _CHUNK]
            for k in ok:
                logits = proj[:, :k] @ (u[:, :k] * s[:k]).T + b
                correct[k] += int((logits.argmax(1) == yb).sum())
        out = {k: correct[k] / len(x) for k in ok}
    if full_rank:
        acc = ff_top1(w, b, x, y)
        out.update(dict.fromkeys(full_rank, acc))
    return {**out, **missing(too_big)}


@dataclass(frozen=True, eq=False)
class SVDFeatures:
    """Top right singular vectors of an (uncentred) train feature matrix (FF+SVD).

    Attributes:
        components: ``(r, d)`` float64, orthonormal rows ``V^T`` in decreasing order of
            singular value (``r`` = the largest valid rank asked for).
        singular_values: ``(r,)`` the matching singular values of the train matrix.
        max_rank: ``min(n_train, d)``, the largest rank the train matrix has room for.
        ranks: ``{k: True if k <= max_rank else False}`` for the requested ranks.

    ``transform(x, k)`` (also ``self(x, k)``) returns ``x @ components[:k].T`` as float32:
    ``(n, k)``; ``k=None`` gives all ``r`` coordinates, whose first k columns are the rank-k
    projection.
    """

    components: np.ndarray
    singular_values: np.ndarray
    max_rank: int
    ranks: dict[int, bool]

    def transform(self, x: Any, k: int | None = None) -> np.ndarray:
        x = as_matrix(x, "x")
        d = self.components.shape[1]
        if x.shape[1] != d:
            raise MRLError(f"x has width {x.shape[1]} but the SVD was fitted on width {d}")
        r = len(self.components)
        if k is None:
            k = r
        k = integer(
            k,
            "k",
            min=1,
            max=r,
            hint=f"(the ranks fitted; the train matrix has rank <= {self.max_rank})",
        )
        out = np.empty((len(x), k), dtype=np.float32)
        basis = self.components[:k].T
        for start in range(0, len(x), _CHUNK):
            out[start : start + _CHUNK] = x[start : start + _CHUNK].astype(np.float64) @ basis
        return out

    __call__ = transform


def svd_features(
    train_x: Any, ranks: Sequence[int] = (8, 16, 32, 64, 128, 256, 512, 1024, 2048)
) -> SVDFeatures:
    """Fit FF+SVD on the train features: the top right singular vectors of uncentred ``X``.

    Args:
        train_x: ``(n, d)`` FF-max train embeddings (database side).
        ranks: representation sizes ``k`` wanted; those above ``min(n, d)`` are marked
            False in ``.ranks`` (report them as missing) and not fitted.

    Returns:
        :class:`SVDFeatures`; project train and test with ``.transform(x, k)``.
    """
    x = as_matrix(train_x, "train_x")
    ranks = as_sizes(ranks, "ranks")
    n, d = x.shape
    max_rank = min(n, d)
    ok, _ = split_sizes(ranks, max_rank)
    if not ok:
        raise MRLError(
            f"ranks={ranks}: every rank exceeds min(n_train, d)={max_rank}; use ranks <= {max_rank}"
        )
    r = ok[-1]
    if n > d:
        gram = np.zeros((d, d))
        for start in range(0, n, _CHUNK):
            block = x[start : start + _CHUNK].astype(np.float64)
            gram += block.T @ block
        evals, evecs = np.linalg.eigh(gram)  # ascending
        order = np.argsort(evals)[::-1][:r]
        vt = evecs[:, order].T
        s = np.sqrt(np.clip(evals[order], 0.0, None))
    else:
        _, s, vt = np.linalg.svd(x.astype(np.float64), full_matrices=False)
        vt, s = vt[:r], s[:r]
    vt = vt * _fix_signs(vt)[:, None]
    return SVDFeatures(
        components=np.ascontiguousarray(vt),
        singular_values=s,
        max_rank=max_rank,
        ranks={k: k <= max_rank for k in ranks},
    )


def ff_svd_1nn(
    train_x: Any,
    train_y: Any,
    test_x: Any,
    test_y: Any,
    dims: Sequence[int] = (8, 16, 32, 64, 128, 256, 512, 1024, 2048),
    use_gpu: bool | None = None,
) -> dict[int, float | None]:
    """Table 2 "FF+SVD": 1-NN accuracy on the rank-k SVD projection of FF-max's features.

    The SVD is fitted on ``train_x`` only (:func:`svd_features`); train (database) and test
    (queries) are projected with it; 1-NN uses :func:`mrl.eval.search.prefix_neighbors`
    (slice, L2-normalise, exact cosine search) and :func:`mrl.eval.knn.knn_metrics` with
    ``k=1``. Returns ``{k: accuracy}``, ``None`` for ``k > min(n_train, d)``.
    """
    from mrl.eval.knn import knn_metrics
    from mrl.eval.search import prefix_neighbors

    train = as_matrix(train_x, "train_x")
    test = as_matrix(test_x, "test_x")
    if test.shape[1] != train.shape[1]:
        raise MRLError(f"test_x has width {test.shape[1]} but train_x has {train.shape[1]}")
    train_y = as_labels(train_y, len(train), "train_y")
    test_y = as_labels(test_y, len(test), "test_y")
    dims = as_sizes(dims, "dims")
    fit = svd_features(train, dims)
    ok = [k for k in dims if fit.ranks[k]]
    neighbors = prefix_neighbors(fit(train), fit(test), ok, k=1, use_gpu=use_gpu)
    acc = knn_metrics(neighbors, train_y, test_y, num_classes_of(train_y, test_y), k=1)
    return {k: (acc[f"knn/top1@d{k}"] if fit.ranks[k] else None) for k in dims}
