"""Image-text metrics at every prefix size: cross-modal recall@k, zero-shot and kNN accuracy.

Conventions
-----------
* Every prefix is sliced, then L2-normalised (``truncate(z, m, normalize=True)``), on both
  sides; similarity is the cosine (an exact search, :func:`mrl.eval.search.prefix_neighbors`:
  equal scores rank the lower index first).
* Relevance is given by *groups*: image ``i`` and text ``j`` match when
  ``image_group[i] == text_group[j]`` (a COCO-style file: the image's own id, so an image
  matches its captions; class-templated captions: the class).
* ``R@k`` (recall with at least one relevant item, the hit rate): the number of queries with
  at least one relevant item among their ``k`` nearest, divided by the number of queries.
  ``i2t``: queries = images, database = texts; ``t2i``: queries = texts, database = images.
  ``k`` larger than the database counts the whole database.
* Zero-shot top-1: class ``c``'s classifier vector at prefix ``m`` is the mean of its prompts'
  normalised ``m``-prefixes, normalised again (one prompt: its normalised prefix); an image
  is assigned the class of largest cosine (ties: the lower class index).
* kNN top-k: database = training images, queries = test images; the ``n_neighbors`` nearest
  each vote for their label with weight ``exp(score / T)`` (DINO: 20 neighbours, T = 0.07, as
  :mod:`mrl.eval.knn`); top-k = the true class is among the ``k`` classes with the largest
  vote (ties: the lower class index first).
* Values are fractions in [0, 1]; keys ``{prefix}{name}@d{m}``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from mrl.core.errors import MRLError
from mrl.core.nesting import truncate
from mrl.core.validate import as_labels, as_matrix
from mrl.eval.knn import weighted_knn_votes
from mrl.eval.search import prefix_neighbors
from mrl.eval.text_retrieval import check_ks

DEFAULT_KS = (1, 5, 10)


def _hits(idx: np.ndarray, db_group: np.ndarray, q_group: np.ndarray) -> np.ndarray:
    """``(q, k)`` booleans: neighbour ``j`` of query ``i`` is relevant."""
    return db_group[idx] == q_group[:, None]


def cross_modal_recall(
    images: np.ndarray,
    texts: np.ndarray,
    image_group: np.ndarray,
    text_group: np.ndarray,
    dims: Sequence[int],
    ks: Sequence[int] = DEFAULT_KS,
    prefix: str = "",
) -> dict[str, float]:
    """``{prefix}i2t_R@{k}@d{m}`` and ``{prefix}t2i_R@{k}@d{m}`` (see the module doc).

    Args:
        images: ``(n_images, d)`` full-width image embeddings (unnormalised).
        texts: ``(n_texts, d)`` full-width text embeddings (unnormalised).
        image_group, text_group: the relevance keys (ints) of each row.
        dims: prefix sizes; ks: cut-offs; prefix: key prefix (e.g. ``test/``).
    """
    images, texts = as_matrix(images, "images"), as_matrix(texts, "texts")
    image_group = np.asarray(image_group).reshape(-1)
    text_group = np.asarray(text_group).reshape(-1)
    if len(image_group) != len(images) or len(text_group) != len(texts):
        raise MRLError(
            f"groups: {len(image_group)} image / {len(text_group)} text keys for "
            f"{len(images)} images / {len(texts)} texts; give one key per row"
        )
    ks = check_ks(ks, "(1, 5, 10)")
    out: dict[str, float] = {}
    for name, db, q, db_g, q_g in (
        ("i2t", texts, images, text_group, image_group),
        ("t2i", images, texts, image_group, text_group),
    ):
        neighbors = prefix_neighbors(db, q, dims, min(ks[-1], len(db)))
        for m, (_, idx) in sorted(neighbors.items()):
            hits = _hits(idx, db_g, q_g)
            for k in ks:
                out[f"{prefix}{name}_R@{k}@d{m}"] = float(hits[:, :k].any(axis=1).mean())
    return out


def class_classifier(prompts: np.ndarray, prompt_class: np.ndarray, m: int, n: int) -> np.ndarray:
    """``(n, m)`` zero-shot classifier at prefix ``m``: per class the mean of its prompts'
    normalised prefixes, normalised again."""
    z = truncate(as_matrix(prompts, "prompts"), m, normalize=True)
    w = np.zeros((n, m), np.float64)
    np.add.at(w, np.asarray(prompt_class), z)
    return truncate(w.astype(np.float32), m, normalize=True)


def zero_shot_top1(
    images: np.ndarray,
    labels: np.ndarray,
    prompts: np.ndarray,
    prompt_class: np.ndarray,
    num_classes: int,
    dims: Sequence[int],
    prefix: str = "",
) -> dict[str, float]:
    """``{prefix}zeroshot_top1@d{m}``: the class prompts' embeddings as the classifier.

    Args:
        images: ``(n, d)`` image embeddings; labels: their classes.
        prompts: ``(p, d)`` prompt embeddings; prompt_class: the class of each prompt (every
            class needs one).
    """
    images = as_matrix(images, "images")
    labels = as_labels(labels, len(images), "labels", num_classes)
    prompt_class = as_labels(prompt_class, len(prompts), "prompt_class", num_classes)
    missing = sorted(set(range(num_classes)) - set(prompt_class.tolist()))
    if missing:
        raise MRLError(f"zero-shot: class {missing[0]} has no prompt; give one per class")
    out = {}
    for m in dims:
        w = class_classifier(prompts, prompt_class, m, num_classes)
        pred = (truncate(images, m, normalize=True) @ w.T).argmax(axis=1)
        out[f"{prefix}zeroshot_top1@d{m}"] = float(np.mean(pred == labels))
    return out


def knn_topk(
    train_x: np.ndarray,
    train_y: np.ndarray,
    test_x: np.ndarray,
    test_y: np.ndarray,
    num_classes: int,
    dims: Sequence[int],
    ks: Sequence[int] = (1, 5),
    n_neighbors: int = 20,
    T: float = 0.07,
    prefix: str = "",
) -> dict[str, float]:
    """``{prefix}knn_top{k}@d{m}``: weighted kNN votes (see the module doc); ``k`` above the
    number of classes is left out."""
    train_x, test_x = as_matrix(train_x, "train_x"), as_matrix(test_x, "test_x")
    train_y = as_labels(train_y, len(train_x), "train_y", num_classes)
    test_y = as_labels(test_y, len(test_x), "test_y", num_classes)
    if not float(T) > 0:
        raise MRLError(f"T={T!r} must be a positive temperature (DINO: 0.07)")
    ks = [k for k in check_ks(ks, "(1, 5, 10)") if k <= num_classes]
    neighbors = prefix_neighbors(train_x, test_x, dims, min(int(n_neighbors), len(train_x)))
    out = {}
    for m, (scores, idx) in sorted(neighbors.items()):
        votes = weighted_knn_votes(scores, train_y[idx], num_classes, T)
        order = np.argsort(-votes, axis=1, kind="stable")
        for k in ks:
            hit = (order[:, :k] == test_y[:, None]).any(axis=1)
            out[f"{prefix}knn_top{k}@d{m}"] = float(hit.mean())
    return out
