"""Building blocks: a configurable norm layer, a conv-norm-activation unit, and the small-input stem."""
from __future__ import annotations

import math
from typing import Optional

from torch import nn

SMALL_INPUT = 64  # images up to this many pixels a side get a small-input stem: 3x3 stride-1 conv, no max-pool


def norm_layer(kind: str, channels: int) -> nn.Module:
    """batch: per channel over (N, H, W); layer: per sample over (C, H, W); instance: per sample and
    channel over (H, W); group: per sample over gcd(32, C) groups of channels; none: identity."""
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "layer":
        return nn.GroupNorm(1, channels)
    if kind == "instance":
        return nn.GroupNorm(channels, channels)
    if kind == "group":
        return nn.GroupNorm(math.gcd(32, channels), channels)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"unknown norm {kind!r}")


def conv_unit(
    c_in: int,
    c_out: int,
    norm: str = "none",
    norm_before_activation: bool = False,
    kernel_size: int = 3,
    stride: int = 1,
    padding: Optional[int] = None,
    groups: int = 1,
    activation: type[nn.Module] = nn.ReLU,
) -> nn.Sequential:
    """A conv (same padding unless ``padding`` is given), the activation and (unless ``norm='none'``) a
    norm layer before or after the activation."""
    padding = kernel_size // 2 if padding is None else padding
    conv = nn.Conv2d(c_in, c_out, kernel_size, stride, padding, groups=groups)
    act = activation()
    if norm == "none":
        return nn.Sequential(conv, act)
    n = norm_layer(norm, c_out)
    return nn.Sequential(conv, n, act) if norm_before_activation else nn.Sequential(conv, act, n)


def is_small(image_size: tuple[int, int]) -> bool:
    return max(image_size) <= SMALL_INPUT


def stem_conv(conv: nn.Conv2d, in_channels: int, small: bool) -> nn.Conv2d:
    """A torchvision model's first conv taking ``in_channels``; for small inputs 3x3 with stride 1. A new
    conv is initialized as torchvision initializes ResNet, VGG, MobileNet and EfficientNet convs."""
    if not small and in_channels == conv.in_channels:
        return conv
    kernel, stride, padding = (3, 1, 1) if small else (conv.kernel_size, conv.stride, conv.padding)
    new = nn.Conv2d(in_channels, conv.out_channels, kernel, stride, padding, bias=conv.bias is not None)
    nn.init.kaiming_normal_(new.weight, mode="fan_out", nonlinearity="relu")
    if new.bias is not None:
        nn.init.zeros_(new.bias)
    return new

