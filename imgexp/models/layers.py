"""Building blocks: a configurable norm layer, a conv-norm-activation unit, and the small-input stem."""
from __future__ import annotations

import math
from typing import Callable, Optional

from torch import nn

from imgexp.config import require, require_choice

SMALL_INPUT = 64  # images up to this many pixels a side get a small-input stem: 3x3 stride-1 conv, no max-pool


NORMS: dict[str, Callable[[int], nn.Module]] = {
    "batch": nn.BatchNorm2d,  # per channel over (N, H, W)
    "layer": lambda c: nn.GroupNorm(1, c),  # per sample over (C, H, W)
    "instance": lambda c: nn.GroupNorm(c, c),  # per sample and channel over (H, W)
    "group": lambda c: nn.GroupNorm(math.gcd(32, c), c),  # per sample over gcd(32, C) groups of channels
    "none": lambda c: nn.Identity(),
}


def norm_layer(kind: str, channels: int) -> nn.Module:
    return NORMS[kind](channels)


def check_norm(cfg) -> None:
    """A model config's ``norm`` names one of :data:`NORMS`."""
    require_choice(cfg.norm, tuple(NORMS), "norm")


def check_fractions(*keys: str) -> Callable[[object], None]:
    """A check that each of ``keys`` (dropout probabilities) is in [0, 1)."""

    def check(cfg) -> None:
        for key in keys:
            require(0.0 <= getattr(cfg, key) < 1.0, key, "must be in [0, 1)")

    return check


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

