"""Matryoshka Representation Learning: nested embeddings whose every prefix is useful.

Public API::

    from mrl import MRLHead, MatryoshkaLoss, parse_dims, truncate
"""

from mrl.dims import auto_dims, parse_dims, parse_weights
from mrl.errors import MRLError
from mrl.nesting import MatryoshkaLoss, MRLHead, truncate

__all__ = [
    "MRLError",
    "MRLHead",
    "MatryoshkaLoss",
    "auto_dims",
    "parse_dims",
    "parse_weights",
    "truncate",
]
__version__ = "0.1.0"
