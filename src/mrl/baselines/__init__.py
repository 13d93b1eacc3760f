"""Baselines of the MRL paper (Kusupati et al., 2022), Tables 1 and 2.

=============  =====================================================  =====================
paper name     definition (paper)                                     here
=============  =====================================================  =====================
SVD            rank-k approximation of FF-max's classification layer  :func:`svd_top1`
FF+SVD (1-NN)  SVD of FF-max's features                               :func:`ff_svd_1nn`
Rand. LP       linear probe on k random features of FF-max            :func:`rand_lp`
Rand. FS       first k features of FF-max (1-NN)                      :func:`rand_fs_1nn`
Slim. Net      slimmable network, widths 25/50/75/100%                :class:`SlimmableResNet`
=============  =====================================================  =====================

(FF-k, independently trained models, is :class:`mrl.objectives.classification.MRLLitModule` with ``ff_dim``.)

Every evaluation returns ``{k: value}`` keyed by representation size ``k``, values are
fractions in [0, 1], and a size a baseline cannot produce (SVD rank above ``min(C, d)``,
more random features than the width, a size no slimmable width gives) is ``None`` --
reported as missing, like the paper's '-', never invented.
"""

from mrl.baselines.random_features import rand_fs_1nn, rand_lp, random_feature_indices
from mrl.baselines.slimmable import slimmable_top1
from mrl.baselines.svd import (
    SVDFeatures,
    ff_svd_1nn,
    ff_top1,
    svd_classifier,
    svd_features,
    svd_top1,
)
from mrl.models.slimmable import (
    WIDTH_MULTS,
    SlimmableBasicBlock,
    SlimmableConv2d,
    SlimmableLinear,
    SlimmableResNet,
    SwitchableBatchNorm2d,
)
from mrl.objectives.slimmable import SlimmableLitModule, sandwich_widths

__all__ = [
    "SVDFeatures",
    "SlimmableBasicBlock",
    "SlimmableConv2d",
    "SlimmableLinear",
    "SlimmableLitModule",
    "SlimmableResNet",
    "SwitchableBatchNorm2d",
    "WIDTH_MULTS",
    "ff_svd_1nn",
    "ff_top1",
    "rand_fs_1nn",
    "rand_lp",
    "random_feature_indices",
    "sandwich_widths",
    "slimmable_top1",
    "svd_classifier",
    "svd_features",
    "svd_top1",
]
