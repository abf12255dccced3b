"""Building blocks shared by the custom CNNs: a configurable norm layer and a conv-norm-activation unit."""
from __future__ import annotations

import math

from torch import nn


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


def conv_unit(c_in: int, c_out: int, norm: str = "none", norm_before_activation: bool = False) -> nn.Sequential:
    """3x3 same-padding conv, ReLU and (unless ``norm='none'``) a norm layer before or after the ReLU."""
    conv = nn.Conv2d(c_in, c_out, 3, padding=1)
    act = nn.ReLU()
    if norm == "none":
        return nn.Sequential(conv, act)
    n = norm_layer(norm, c_out)
    return nn.Sequential(conv, n, act) if norm_before_activation else nn.Sequential(conv, act, n)
