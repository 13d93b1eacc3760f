"""A seeded corruption suite for distribution-shift evaluation of small grey images.

``corrupt(images, kind, severity, seed)`` returns a new uint8 array of the same shape: the
same ``(images, kind, severity, seed)`` always gives the same array. Every corruption is a
torchvision transform (``torchvision.transforms.v2.functional``) or plain tensor arithmetic;
severities 1..3 grow in strength:

=============  ==============================================================
``noise``      additive Gaussian noise, std 0.08 / 0.16 / 0.28 (of the 0..1 range)
``blur``       Gaussian blur, kernel 3 / 5 / 7, sigma 0.6 / 1.0 / 1.5
``contrast``   contrast factor 0.5 / 0.3 / 0.15 (towards the image mean)
``rotation``   rotation by +-10 / 20 / 35 degrees (sign drawn per image)
``elastic``    elastic displacement, alpha 10 / 20 / 35, sigma 3 (per-image field)
=============  ==============================================================

Images are ``(N, H, W)`` or ``(N, C, H, W)`` uint8; results are clipped to 0..255.
"""

from __future__ import annotations

import numpy as np
import torch
from torchvision.transforms.v2 import functional as TF

from mrl.core.errors import MRLError

KINDS = ("noise", "blur", "contrast", "rotation", "elastic")
SEVERITIES = (1, 2, 3)

_NOISE = {1: 0.08, 2: 0.16, 3: 0.28}
_BLUR = {1: (3, 0.6), 2: (5, 1.0), 3: (7, 1.5)}
_CONTRAST = {1: 0.5, 2: 0.3, 3: 0.15}
_ROTATION = {1: 10.0, 2: 20.0, 3: 35.0}
_ELASTIC = {1: 10.0, 2: 20.0, 3: 35.0}


def corrupt(images: np.ndarray, kind: str, severity: int, seed: int = 0) -> np.ndarray:
    """The corrupted copy of ``images`` (uint8, same shape); deterministic in its arguments."""
    if kind not in KINDS:
        raise MRLError(f"shift kind={kind!r} is not one of {list(KINDS)}")
    if severity not in SEVERITIES:
        raise MRLError(f"shift severity={severity!r} is not one of {list(SEVERITIES)}")
    arr = np.asarray(images)
    if arr.dtype != np.uint8 or arr.ndim not in (3, 4):
        raise MRLError(
            f"images must be uint8 (N, H, W) or (N, C, H, W), got {arr.dtype} {arr.shape}"
        )
    x = torch.from_numpy(arr if arr.ndim == 4 else arr[:, None]).float() / 255.0
    gen = torch.Generator().manual_seed(int(seed) * 1000 + KINDS.index(kind) * 10 + severity)
    if kind == "noise":
        x = x + _NOISE[severity] * torch.randn(x.shape, generator=gen)
    elif kind == "blur":
        k, sigma = _BLUR[severity]
        x = TF.gaussian_blur(x, [k, k], [sigma, sigma])
    elif kind == "contrast":
        x = TF.adjust_contrast(x, _CONTRAST[severity])
    elif kind == "rotation":
        signs = torch.randint(0, 2, (len(x),), generator=gen) * 2 - 1
        x = torch.stack(
            [
                TF.rotate(img, float(s) * _ROTATION[severity])
                for img, s in zip(x, signs.tolist(), strict=True)
            ]
        )
    else:  # elastic: a smoothed random displacement field per image
        h, w = x.shape[-2:]
        alpha = _ELASTIC[severity]
        out = []
        for img in x:
            d = torch.rand((1, 2, h, w), generator=gen) * 2 - 1
            d = TF.gaussian_blur(d, [13, 13], [3.0, 3.0]) * alpha
            disp = (d / torch.tensor([w, h]).view(1, 2, 1, 1)).permute(0, 2, 3, 1)
            out.append(TF.elastic(img, disp))
        x = torch.stack(out)
    y = (x.clamp(0, 1) * 255.0).round().to(torch.uint8).numpy()
    return y if arr.ndim == 4 else y[:, 0]


def suite(
    images: np.ndarray, seed: int = 0, kinds=KINDS, severities=SEVERITIES
) -> dict[str, np.ndarray]:
    """``{"<kind>-<severity>": corrupted images}`` for every kind and severity."""
    return {f"{k}-{s}": corrupt(images, k, s, seed) for k in kinds for s in severities}
