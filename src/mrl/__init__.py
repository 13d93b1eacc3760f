"""Matryoshka Representation Learning: nested embeddings whose every prefix is useful.

Public API::

    from mrl import MRLHead, MatryoshkaLoss, parse_dims, truncate, load_module, load

``mrl.load(path).encode(images, dim=64)``: a trained run, checkpoint or ``mrl-export``
folder as an encoder at any prefix size (:mod:`mrl.inference`).

Layout: ``mrl.core`` (dims, nesting maths, validators, errors), ``mrl.models`` (nn.Modules),
``mrl.objectives`` (the LightningModules), ``mrl.data``, ``mrl.eval`` (metrics, evaluator
registry, embedding cache, reporting), ``mrl.baselines``, ``mrl.run`` (run dirs, records,
checkpoints, resume, sweeps) and ``mrl.tasks`` (train, evaluate: the only orchestrators).
"""

from mrl.core.dims import auto_dims, parse_dims, parse_weights
from mrl.core.errors import MRLError
from mrl.core.nesting import truncate
from mrl.models.heads import MRLHead
from mrl.objectives.nested import MatryoshkaLoss

__all__ = [
    "MRLError",
    "MRLHead",
    "MatryoshkaLoss",
    "auto_dims",
    "load",
    "load_module",
    "parse_dims",
    "parse_weights",
    "truncate",
]
__version__ = "0.1.0"


def load_module(ckpt_path):
    """A trained model from a checkpoint (``weights_only``): ``load_module(p).embed(x)``."""
    from mrl.tasks.evaluate import load_module as _load

    return _load(ckpt_path)


def load(path):
    """A :class:`mrl.inference.MatryoshkaEncoder` from a ``.ckpt``, a run dir or an
    ``mrl-export`` folder: ``mrl.load(p).encode(images, dim=64)`` (see :mod:`mrl.inference`)."""
    from mrl.inference import load as _load

    return _load(path)
