"""MobileNet v1 (not in torchvision: written here) and torchvision's inverted-residual descendants,
MobileNet v2/v3 and EfficientNet-B0..B3. Small inputs: the stride-2 stem conv gets stride 1."""
from __future__ import annotations

from functools import partial

from torch import nn

from imgexp.config import require
from imgexp.models.layers import check_fractions, check_norm, conv_unit, is_small, stem_conv
from imgexp.models.registry import register_model
from imgexp.runtime import checked_torchvision

# (filters, stride) of the 13 depthwise-separable blocks after the stem (Howard et al. 2017, table 1)
V1_BLOCKS = [(64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2), *[(512, 1)] * 5, (1024, 2), (1024, 1)]


def check_width(cfg) -> None:
    require(cfg.width_multiplier > 0, "width_multiplier", f"must be > 0, got {cfg.width_multiplier}")


@register_model(checks=(check_norm, check_width))
def mobilenet_v1(
    in_channels: int,
    num_classes: int,
    image_size: tuple[int, int],
    width_multiplier: float = 1.0,
    norm: str = "batch",
    norm_before_activation: bool = True,
) -> nn.Module:
    """A 3x3 conv of 32 filters (stride 2; 1 for small inputs), then 13 blocks of a 3x3 depthwise conv and
    a 1x1 pointwise conv, each with norm and ReLU; global average pool, classifier. ``width_multiplier``
    scales every layer's filters."""

    def width(filters: int) -> int:
        return max(1, int(filters * width_multiplier))

    c = width(32)
    layers = [conv_unit(in_channels, c, norm, norm_before_activation, stride=1 if is_small(image_size) else 2)]
    for filters, stride in V1_BLOCKS:
        layers += [
            conv_unit(c, c, norm, norm_before_activation, stride=stride, groups=c),
            conv_unit(c, width(filters), norm, norm_before_activation, kernel_size=1),
        ]
        c = width(filters)
    return nn.Sequential(nn.Sequential(*layers), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, num_classes))


def inverted_residual(
    name: str, in_channels: int, num_classes: int, image_size: tuple[int, int], dropout: float = 0.2
) -> nn.Module:
    """A torchvision model whose stem conv is ``features[0][0]``; ``dropout`` before its classifier."""
    torchvision = checked_torchvision()  # only when building: importing it costs a second

    model = torchvision.models.get_model(name, weights=None, num_classes=num_classes, dropout=dropout)
    model.features[0][0] = stem_conv(model.features[0][0], in_channels, is_small(image_size))
    return model


for _name in ("mobilenet_v2", "mobilenet_v3_small", "mobilenet_v3_large",
              "efficientnet_b0", "efficientnet_b1", "efficientnet_b2", "efficientnet_b3"):
    register_model(partial(inverted_residual, _name), name=_name, checks=(check_fractions("dropout"),))
