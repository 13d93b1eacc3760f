"""timm backbones behind one contract: ``Backbone(images) -> z`` of shape ``(B, embed_dim)``.

* Any timm name works (``timm.create_model(name, num_classes=0)`` gives pooled features and
  ``num_features`` is their width), so ResNets, ViTs, ConvNeXts, ... need no code here.
* ``in_chans`` and ``img_size`` follow the data: timm adapts the first layer to ``in_chans``;
  ViT-style models get ``img_size`` (and a patch size that divides it when needed).
* ViTs on images whose size their patch does not divide (28 px) get the largest patch size
  that divides it with at least 7x7 tokens (4 for 28 px), with a notice; ``patch_size``
  overrides it.
* ``small_input_stem=True`` (ResNets on 28-32 px images, CIFAR-style): the 7x7 stride-2
  stem convolution becomes 3x3 stride-1, keeping the max-pool, so a 28x28 image reaches the
  last stage at 2x2 instead of 1x1.
* When ``embed_dim`` is larger than the backbone's width (e.g. dims up to 2048 on a 768-wide
  ViT), a linear projection to ``embed_dim`` is appended; otherwise prefixes are sliced from
  the backbone's own features, as in the paper.
"""

from __future__ import annotations

import logging

import timm
import torch
from torch import nn

from mrl.core.errors import MRLError
from mrl.core.validate import positive_int

log = logging.getLogger(__name__)


def _check_name(name: str) -> None:
    if not isinstance(name, str) or not timm.is_model(name):
        close = timm.list_models(f"*{str(name).split('_')[0]}*")[:5] if name else []
        hint = f" (close: {', '.join(close)})" if close else ""
        raise MRLError(
            f"model.name={name!r} is not a timm model{hint}; see timm.list_models() for valid names"
        )


class Backbone(nn.Module):
    """A timm feature extractor, optionally followed by a projection to ``embed_dim``."""

    def __init__(
        self,
        name: str,
        in_chans: int = 3,
        img_size: int | None = None,
        pretrained: bool = False,
        embed_dim: int | None = None,
        small_input_stem: bool = False,
        patch_size: int | None = None,
        drop_path_rate: float = 0.0,
        **timm_kwargs,
    ) -> None:
        super().__init__()
        _check_name(name)
        if not isinstance(in_chans, int) or in_chans < 1:
            raise MRLError(f"in_chans={in_chans!r} must be a positive integer (1 grey, 3 RGB)")
        kwargs = dict(num_classes=0, in_chans=in_chans, **timm_kwargs)
        if drop_path_rate:
            kwargs["drop_path_rate"] = drop_path_rate
        if img_size is not None and _accepts_img_size(name):
            kwargs["img_size"] = img_size
            patch = patch_size or _patch_size(name)
            if patch and img_size % patch:
                if patch_size:
                    raise MRLError(
                        f"model.patch_size={patch_size} does not divide the image size "
                        f"{img_size}; use a divisor of {img_size}"
                    )
                # small images (28-px Fashion-MNIST): the largest patch giving >= 7x7 tokens
                fits = [p for p in range(1, patch + 1) if img_size % p == 0 and img_size // p >= 7]
                if not fits:
                    raise MRLError(
                        f"image size {img_size} is too small for {name} (patch {patch}): a "
                        "vision transformer needs at least 7x7 patches; use data.img_size >= "
                        "7 (e.g. 28 or 224) or a convolutional model"
                    )
                patch = max(fits)
                log.warning(
                    "%s: image size %d is not a multiple of its patch; using patch_size=%d "
                    "(%dx%d tokens)",
                    name,
                    img_size,
                    patch,
                    img_size // patch,
                    img_size // patch,
                )
            if patch and patch != _patch_size(name):
                kwargs["patch_size"] = patch
        try:
            self.model = timm.create_model(name, pretrained=pretrained, **kwargs)
        except MRLError:
            raise
        except Exception as e:  # noqa: BLE001 - turn download/shape errors into one line
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise MRLError(f"could not create timm model {name!r}: {first}") from e
        self.name = name
        stem_width = timm_kwargs.get("stem_width")
        conv1 = getattr(self.model, "conv1", None)
        if stem_width is not None and isinstance(conv1, nn.Conv2d):
            self._stem_width(positive_int(stem_width, "stem_width"))
        if small_input_stem:
            self._small_stem(in_chans)
        self.width = int(self.model.num_features)
        self.embed_dim = self.width
        self.proj: nn.Module = nn.Identity()
        if embed_dim is not None:
            self.expand_to(embed_dim)

    def expand_to(self, embed_dim: int) -> None:
        """Append a linear projection width -> ``embed_dim`` when it is larger than the width."""
        embed_dim = positive_int(embed_dim, "embed_dim")
        if embed_dim <= self.width:
            return
        self.embed_dim = embed_dim
        self.proj = nn.Linear(self.width, embed_dim)
        log.warning(
            "max(dims)=%d > %s width %d: adding a linear projection %d -> %d",
            embed_dim,
            self.name,
            self.width,
            self.width,
            embed_dim,
        )

    def _stem_width(self, width: int) -> None:
        """A plain (one-conv) ResNet stem ``width`` channels wide: timm's plain stem is 64
        wide whatever ``stem_width`` says (it only sizes deep stems). The stem conv, its
        BatchNorm and the first block's input convs (its conv1 and shortcut) are rebuilt,
        initialised as timm initialises ResNets."""
        m = self.model
        if m.conv1.out_channels == width:
            return
        old = m.conv1
        m.conv1 = nn.Conv2d(
            old.in_channels, width, old.kernel_size, old.stride, old.padding, bias=False
        )
        m.bn1 = nn.BatchNorm2d(width)
        block = m.layer1[0]
        c = block.conv1
        block.conv1 = nn.Conv2d(
            width, c.out_channels, c.kernel_size, c.stride, c.padding, bias=False
        )
        out = block.bn3.num_features if hasattr(block, "bn3") else block.bn2.num_features
        stride = block.conv2.stride if hasattr(block, "bn3") else c.stride
        if block.downsample is not None:
            d = block.downsample[0]
            block.downsample[0] = nn.Conv2d(width, out, d.kernel_size, d.stride, bias=False)
        elif width != out:
            block.downsample = nn.Sequential(
                nn.Conv2d(width, out, 1, stride, bias=False), nn.BatchNorm2d(out)
            )
        for mod in (m.conv1, block.conv1, *(block.downsample or [])):
            if isinstance(mod, nn.Conv2d):
                nn.init.kaiming_normal_(mod.weight, mode="fan_out", nonlinearity="relu")
        if hasattr(m, "feature_info"):
            m.feature_info[0]["num_chs"] = width

    def _small_stem(self, in_chans: int) -> None:
        conv = getattr(self.model, "conv1", None)
        if not isinstance(conv, nn.Conv2d):
            raise MRLError(
                f"model.small_input_stem=true needs a ResNet-style 'conv1' stem; {self.name} "
                "has none (set model.small_input_stem=false)"
            )
        self.model.conv1 = nn.Conv2d(in_chans, conv.out_channels, 3, 1, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.model(x))

    def data_config(self) -> dict:
        """timm's resolved data config (input size, mean, std, interpolation, crop_pct)."""
        return timm.data.resolve_data_config(model=self.model)


def _accepts_img_size(name: str) -> bool:
    return any(k in name for k in ("vit", "deit", "swin", "eva", "beit", "mixer", "cait"))


def _patch_size(name: str) -> int | None:
    import re

    m = re.search(r"patch(\d+)", name)
    return int(m.group(1)) if m else None
