"""Slimmable ResNet: the "Slim. Net" baseline of the MRL paper (Kusupati et al., 2022).

What the paper compares against
-------------------------------
Table 1's "Slim. Net" is a slimmable network (Yu et al., ICLR 2019, "Slimmable Neural
Networks") with widths 25/50/75/100%: one set of weights executable at several widths,
where a layer at width multiplier ``w`` uses the *first* ``round(w * channels)`` channels
of its full weight, and every width has its own BatchNorm (switchable BN, since the
feature statistics differ per width). For a ResNet the pooled representation at width
``w`` has ``round(w * 8 * base_width)`` dims, times 4 with bottlenecks (ResNet-50:
2048 x {0.25, 0.5, 0.75, 1} = 512, 1024, 1536, 2048; ResNet-18 with BasicBlocks: 512 x
{...} = 128, 256, 384, 512).

Architecture: the torchvision/timm ResNet with BasicBlocks (``layers=(2, 2, 2, 2)`` is
ResNet-18) or Bottlenecks (``(3, 4, 6, 3)`` is ResNet-50; :data:`RESNET_ARCHS` maps timm
names to both): stem conv (7x7 stride 2, or 3x3 stride 1 with ``small_input_stem`` for 28-32 px
images, as :class:`mrl.models.Backbone` does), BN, ReLU, 3x3 max-pool, four stages of
``base_width * (1, 2, 4, 8)`` channels, global average pool, linear classifier. The input
channels of the stem and the classes of the classifier are never slimmed. At full width
the network *is* a timm ResNet (same parameter names; :meth:`SlimmableResNet.to_timm`
exports any width as a plain timm model with the sliced weights and that width's BN).
Initialisation follows timm (Kaiming-normal fan-out convolutions, zero-initialised last
BN scale in every block). Channel counts at width ``w`` are ``max(1, round(w * c))``
(Python's round), without rounding to multiples of 8.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mrl.core.errors import MRLError
from mrl.core.validate import is_number, positive_int

WIDTH_MULTS = (0.25, 0.5, 0.75, 1.0)


def scaled_channels(channels: int, mult: float) -> int:
    """Channels used at width multiplier ``mult``: ``max(1, round(mult * channels))``."""
    return max(1, int(round(mult * channels)))


def parse_width_mults(width_mults: Any) -> tuple[float, ...]:
    """Width multipliers as a sorted tuple of distinct floats in (0, 1], the largest 1.0."""
    if is_number(width_mults):
        width_mults = [width_mults]
    try:
        mults = [float(m) for m in width_mults]
    except (TypeError, ValueError):
        raise MRLError(
            f"width_mults={width_mults!r} must be a list of numbers in (0, 1], e.g. "
            f"{list(WIDTH_MULTS)}"
        ) from None
    if not mults or any(isinstance(m, bool) for m in width_mults):
        raise MRLError(f"width_mults={width_mults!r} must be a non-empty list of numbers in (0, 1]")
    bad = [m for m in mults if not 0.0 < m <= 1.0]
    if bad:
        raise MRLError(f"width_mults={width_mults!r}: {bad[0]} is not in (0, 1]")
    mults = sorted(mults)
    if any(math.isclose(a, b) for a, b in zip(mults, mults[1:], strict=False)):
        raise MRLError(f"width_mults={width_mults!r} has duplicates; list each width once")
    if not math.isclose(mults[-1], 1.0):
        raise MRLError(
            f"width_mults={width_mults!r}: the largest must be 1.0 (the full network), "
            f"e.g. {list(WIDTH_MULTS)}"
        )
    mults[-1] = 1.0
    return tuple(mults)


# --------------------------------------------------------------------------- layers
class _Switchable:
    """Mixin: a layer whose active width is ``width_idx`` (set by ``set_width``)."""

    width_idx: int


class SlimmableConv2d(nn.Conv2d, _Switchable):
    """A conv whose width ``i`` uses ``weight[:out[i], :in[i]]`` (the first channels).

    Args:
        in_channels_list, out_channels_list: channels per width (increasing; the last is
            the full weight's size).
    """

    def __init__(
        self,
        in_channels_list: Sequence[int],
        out_channels_list: Sequence[int],
        kernel_size: int,
        stride: int = 1,
        padding: int = 0,
        bias: bool = False,
    ) -> None:
        if len(in_channels_list) != len(out_channels_list):
            raise MRLError(
                f"SlimmableConv2d: {len(in_channels_list)} input widths but "
                f"{len(out_channels_list)} output widths; give one of each per width"
            )
        super().__init__(
            max(in_channels_list),
            max(out_channels_list),
            kernel_size,
            stride=stride,
            padding=padding,
            bias=bias,
        )
        self.in_channels_list = [int(c) for c in in_channels_list]
        self.out_channels_list = [int(c) for c in out_channels_list]
        self.width_idx = len(self.in_channels_list) - 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cin = self.in_channels_list[self.width_idx]
        cout = self.out_channels_list[self.width_idx]
        if x.shape[1] != cin:
            raise MRLError(
                f"SlimmableConv2d at width index {self.width_idx} expects {cin} input "
                f"channels, got {x.shape[1]}"
            )
        weight = self.weight[:cout, :cin]
        bias = self.bias[:cout] if self.bias is not None else None
        return F.conv2d(x, weight, bias, self.stride, self.padding, self.dilation, self.groups)


class SlimmableLinear(nn.Linear, _Switchable):
    """A linear layer whose width ``i`` uses ``weight[:out[i], :in[i]]`` and ``bias[:out[i]]``."""

    def __init__(
        self,
        in_features_list: Sequence[int],
        out_features_list: Sequence[int],
        bias: bool = True,
    ) -> None:
        if len(in_features_list) != len(out_features_list):
            raise MRLError(
                f"SlimmableLinear: {len(in_features_list)} input widths but "
                f"{len(out_features_list)} output widths; give one of each per width"
            )
        super().__init__(max(in_features_list), max(out_features_list), bias=bias)
        self.in_features_list = [int(c) for c in in_features_list]
        self.out_features_list = [int(c) for c in out_features_list]
        self.width_idx = len(self.in_features_list) - 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fin = self.in_features_list[self.width_idx]
        fout = self.out_features_list[self.width_idx]
        if x.shape[-1] != fin:
            raise MRLError(
                f"SlimmableLinear at width index {self.width_idx} expects {fin} features, "
                f"got {x.shape[-1]}"
            )
        bias = self.bias[:fout] if self.bias is not None else None
        return F.linear(x, self.weight[:fout, :fin], bias)


class SwitchableBatchNorm2d(nn.Module, _Switchable):
    """Switchable BN (Yu et al. 2019): a separate ``BatchNorm2d`` (own affine parameters
    and running statistics) for every width; width ``i`` uses ``bn[i]``."""

    def __init__(self, num_features_list: Sequence[int]) -> None:
        super().__init__()
        self.num_features_list = [int(c) for c in num_features_list]
        self.bn = nn.ModuleList(nn.BatchNorm2d(c) for c in self.num_features_list)
        self.width_idx = len(self.num_features_list) - 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn[self.width_idx](x)


class SlimmableBasicBlock(nn.Module):
    """ResNet BasicBlock (two 3x3 convs + shortcut) built from slimmable layers.

    Parameter names match timm's ``BasicBlock`` (``conv1, bn1, conv2, bn2, downsample``).
    """

    expansion = 1

    def __init__(self, inplanes: Sequence[int], planes: Sequence[int], stride: int = 1) -> None:
        super().__init__()
        self.conv1 = SlimmableConv2d(inplanes, planes, 3, stride=stride, padding=1)
        self.bn1 = SwitchableBatchNorm2d(planes)
        self.act1 = nn.ReLU(inplace=True)
        self.conv2 = SlimmableConv2d(planes, planes, 3, stride=1, padding=1)
        self.bn2 = SwitchableBatchNorm2d(planes)
        self.act2 = nn.ReLU(inplace=True)
        self.downsample: nn.Module | None = None
        if stride != 1 or inplanes[-1] != planes[-1]:
            self.downsample = nn.Sequential(
                SlimmableConv2d(inplanes, planes, 1, stride=stride),
                SwitchableBatchNorm2d(planes),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.act1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.act2(out + shortcut)


class SlimmableBottleneck(nn.Module):
    """ResNet Bottleneck (1x1 reduce, 3x3, 1x1 expand x4, + shortcut) from slimmable layers.

    Parameter names match timm's ``Bottleneck`` (``conv1..3, bn1..3, downsample``); the
    stride sits on the 3x3 convolution (ResNet v1.5, as timm and torchvision).
    """

    expansion = 4

    def __init__(self, inplanes: Sequence[int], planes: Sequence[int], stride: int = 1) -> None:
        super().__init__()
        outplanes = [p * self.expansion for p in planes]
        self.conv1 = SlimmableConv2d(inplanes, planes, 1)
        self.bn1 = SwitchableBatchNorm2d(planes)
        self.act1 = nn.ReLU(inplace=True)
        self.conv2 = SlimmableConv2d(planes, planes, 3, stride=stride, padding=1)
        self.bn2 = SwitchableBatchNorm2d(planes)
        self.act2 = nn.ReLU(inplace=True)
        self.conv3 = SlimmableConv2d(planes, outplanes, 1)
        self.bn3 = SwitchableBatchNorm2d(outplanes)
        self.act3 = nn.ReLU(inplace=True)
        self.downsample: nn.Module | None = None
        if stride != 1 or inplanes[-1] != outplanes[-1]:
            self.downsample = nn.Sequential(
                SlimmableConv2d(inplanes, outplanes, 1, stride=stride),
                SwitchableBatchNorm2d(outplanes),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.act1(self.bn1(self.conv1(x)))
        out = self.act2(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.act3(out + shortcut)


BLOCKS: dict[str, type[nn.Module]] = {
    "basic": SlimmableBasicBlock,
    "bottleneck": SlimmableBottleneck,
}

#: timm ResNet names -> (block, blocks per stage): what ``objective=slimmable`` builds for
#: ``model=<name>`` (the paper's Slim. Net is the slimmable ResNet-50).
RESNET_ARCHS: dict[str, tuple[str, tuple[int, ...]]] = {
    "resnet18": ("basic", (2, 2, 2, 2)),
    "resnet34": ("basic", (3, 4, 6, 3)),
    "resnet50": ("bottleneck", (3, 4, 6, 3)),
    "resnet101": ("bottleneck", (3, 4, 23, 3)),
    "resnet152": ("bottleneck", (3, 8, 36, 3)),
}


def resnet_arch(name: str) -> tuple[str, tuple[int, ...]]:
    """``(block, layers)`` of a timm ResNet name (MRLError naming the supported ones)."""
    if name not in RESNET_ARCHS:
        raise MRLError(
            f"model.name={name!r} has no slimmable version; objective=slimmable supports "
            f"{list(RESNET_ARCHS)}"
        )
    return RESNET_ARCHS[name]


# --------------------------------------------------------------------------- network
class SlimmableResNet(nn.Module):
    """A width-slimmable ResNet (BasicBlocks or Bottlenecks) with switchable BatchNorm.

    Args:
        layers: blocks per stage (``(2, 2, 2, 2)`` = ResNet-18, ``(3, 4, 6, 3)`` = ResNet-34
            with ``block="basic"``, ResNet-50 with ``block="bottleneck"``).
        base_width: channels of the stem and the first stage; stage ``i`` has
            ``base_width * 2**i`` planes, times 4 at the output of a bottleneck (the full
            representation: 512 for ResNet-18, 2048 for ResNet-50).
        block: ``"basic"`` or ``"bottleneck"`` (see :data:`RESNET_ARCHS`).
        channels: planes of each stage at full width (timm's ``channels``), instead of
            ``base_width * 2**i``; one per stage.
        stem_width: channels of the stem convolution at full width; None: ``base_width``.
            (timm's plain ResNet stem is 64 wide whatever ``channels`` says:
            ``objective=slimmable`` passes 64 so that the two networks match.)
        in_chans: image channels (never slimmed).
        num_classes: classifier outputs (never slimmed).
        width_mults: width multipliers, each in (0, 1], including 1.0.
        small_input_stem: 3x3 stride-1 stem conv (keeping the max-pool) for small images,
            as :class:`mrl.models.Backbone`; False: the standard 7x7 stride-2 stem.

    ``set_width(mult)`` selects the active width (initially the full one); ``forward(x)``
    returns logits, ``embed(x)`` the pooled ``(B, representation_sizes()[mult])`` features.
    """

    def __init__(
        self,
        layers: Sequence[int] = (2, 2, 2, 2),
        base_width: int = 64,
        in_chans: int = 1,
        num_classes: int = 10,
        width_mults: Sequence[float] = WIDTH_MULTS,
        small_input_stem: bool = True,
        block: str = "basic",
        stem_width: int | None = None,
        channels: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        if block not in BLOCKS:
            raise MRLError(f"block={block!r} is not one of {list(BLOCKS)}")
        self.block = block
        block_cls = BLOCKS[block]
        expansion = block_cls.expansion
        if isinstance(layers, (int, str)) or not layers:
            raise MRLError(f"layers={layers!r} must be a list of block counts, e.g. [2, 2, 2, 2]")
        self.layers_cfg = tuple(positive_int(n, "layers[i]") for n in layers)
        self.base_width = positive_int(base_width, "base_width")
        self.in_chans = positive_int(in_chans, "in_chans")
        self.num_classes = positive_int(num_classes, "num_classes")
        self.width_mults = parse_width_mults(width_mults)
        self.small_input_stem = bool(small_input_stem)
        mults = self.width_mults
        if channels is None:
            stage_channels = [self.base_width * 2**i for i in range(len(self.layers_cfg))]
        else:
            if isinstance(channels, (int, str)) or len(channels) != len(self.layers_cfg):
                raise MRLError(
                    f"channels={channels!r} must list one width per stage "
                    f"({len(self.layers_cfg)} stages: layers={list(self.layers_cfg)})"
                )
            stage_channels = [positive_int(c, "channels[i]") for c in channels]
        self.stage_channels = {m: [scaled_channels(c, m) for c in stage_channels] for m in mults}
        self.stage_outputs = {
            m: [c * expansion for c in chans] for m, chans in self.stage_channels.items()
        }
        sizes = [self.stage_outputs[m][-1] for m in mults]
        if len(set(sizes)) != len(sizes):
            raise MRLError(
                f"width_mults={list(mults)} with base_width={base_width} give repeated "
                f"representation sizes {sizes}; use fewer widths or a larger base_width"
            )

        self.stem_width = positive_int(stem_width or self.base_width, "stem_width")
        stem = [scaled_channels(self.stem_width, m) for m in mults]
        if self.small_input_stem:
            self.conv1 = SlimmableConv2d([self.in_chans] * len(mults), stem, 3, 1, 1)
        else:
            self.conv1 = SlimmableConv2d([self.in_chans] * len(mults), stem, 7, 2, 3)
        self.bn1 = SwitchableBatchNorm2d(stem)
        self.act1 = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        inplanes = stem
        for i, (n_blocks, c) in enumerate(zip(self.layers_cfg, stage_channels, strict=True)):
            planes = [scaled_channels(c, m) for m in mults]
            blocks = []
            for j in range(n_blocks):
                stride = 2 if (i > 0 and j == 0) else 1
                blocks.append(block_cls(inplanes, planes, stride))
                inplanes = [p * expansion for p in planes]
            self.add_module(f"layer{i + 1}", nn.Sequential(*blocks))
        self.global_pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(1))
        self.fc = SlimmableLinear(sizes, [self.num_classes] * len(mults))
        self.num_features = sizes[-1]
        self._init_weights()
        self.width_mult = 1.0

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        for m in self.modules():  # timm's zero_init_last: each residual branch starts at 0
            if isinstance(m, SlimmableBasicBlock | SlimmableBottleneck):
                last = m.bn2 if isinstance(m, SlimmableBasicBlock) else m.bn3
                for bn in last.bn:
                    nn.init.zeros_(bn.weight)

    @property
    def stages(self) -> list[nn.Sequential]:
        return [getattr(self, f"layer{i + 1}") for i in range(len(self.layers_cfg))]

    # ------------------------------------------------------------------ widths
    def width_index(self, mult: float) -> int:
        """Index of ``mult`` in ``width_mults`` (MRLError naming the valid ones otherwise)."""
        if is_number(mult):
            for i, m in enumerate(self.width_mults):
                if math.isclose(float(mult), m, rel_tol=1e-9, abs_tol=1e-9):
                    return i
        raise MRLError(f"width mult={mult!r} is not one of this network's {list(self.width_mults)}")

    def set_width(self, mult: float) -> SlimmableResNet:
        """Make every slimmable layer run at width ``mult`` (one of ``width_mults``)."""
        idx = self.width_index(mult)
        for module in self.modules():
            if isinstance(module, _Switchable):
                module.width_idx = idx
        self.width_mult = self.width_mults[idx]
        return self

    def representation_sizes(self) -> dict[float, int]:
        """``{mult: size of embed(x) at that width}``, e.g. ResNet-18: {0.25: 128, ..., 1.0: 512}."""
        return {m: self.stage_outputs[m][-1] for m in self.width_mults}

    # ------------------------------------------------------------------ forward
    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.act1(self.bn1(self.conv1(x))))
        for stage in self.stages:
            x = stage(x)
        return x

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled features at the current width: ``(B, representation_sizes()[mult])``."""
        return self.global_pool(self.forward_features(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, num_classes)`` at the current width."""
        return self.fc(self.embed(x))

    # ------------------------------------------------------------------ export
    def plain_state_dict(self, mult: float = 1.0) -> dict[str, torch.Tensor]:
        """The width-``mult`` sub-network as a plain ResNet state dict (timm's names).

        Conv / linear weights are the first channels of the full weights; BN entries are
        that width's own BatchNorm. Tensors are copies.
        """
        idx = self.width_index(mult)
        out: dict[str, torch.Tensor] = {}
        for name, module in self.named_modules():
            if isinstance(module, SlimmableConv2d):
                cin, cout = module.in_channels_list[idx], module.out_channels_list[idx]
                out[f"{name}.weight"] = module.weight.detach()[:cout, :cin].clone()
                if module.bias is not None:
                    out[f"{name}.bias"] = module.bias.detach()[:cout].clone()
            elif isinstance(module, SlimmableLinear):
                fin, fout = module.in_features_list[idx], module.out_features_list[idx]
                out[f"{name}.weight"] = module.weight.detach()[:fout, :fin].clone()
                if module.bias is not None:
                    out[f"{name}.bias"] = module.bias.detach()[:fout].clone()
            elif isinstance(module, SwitchableBatchNorm2d):
                for key, value in module.bn[idx].state_dict().items():
                    out[f"{name}.{key}"] = value.detach().clone()
        return out

    def to_timm(self, mult: float = 1.0) -> nn.Module:
        """A standalone ``timm.models.resnet.ResNet`` equal to this network at width ``mult``."""
        from timm.models.resnet import BasicBlock, Bottleneck, ResNet

        block = BasicBlock if self.block == "basic" else Bottleneck
        chans = self.stage_channels[self.width_mults[self.width_index(mult)]]
        stem = scaled_channels(self.stem_width, mult)
        net = ResNet(
            block,
            list(self.layers_cfg),
            num_classes=self.num_classes,
            in_chans=self.in_chans,
            channels=tuple(chans),
        )
        # timm's plain stem is always 64 wide: rebuild it (and the block reading it) at `stem`
        kernel, stride, pad = (3, 1, 1) if self.small_input_stem else (7, 2, 3)
        net.conv1 = nn.Conv2d(self.in_chans, stem, kernel, stride, pad, bias=False)
        net.bn1 = nn.BatchNorm2d(stem)
        if stem != 64:
            out = chans[0] * block.expansion
            down = None
            if stem != out:
                down = nn.Sequential(nn.Conv2d(stem, out, 1, bias=False), nn.BatchNorm2d(out))
            net.layer1[0] = block(stem, chans[0], downsample=down)
        net.load_state_dict(self.plain_state_dict(mult))
        return net
