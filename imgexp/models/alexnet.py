"""torchvision's AlexNet; small inputs get a 3x3 stride-1 first conv and lose the first max-pool."""
from __future__ import annotations

from torch import nn

from imgexp.models.layers import check_fractions, is_small, stem_conv
from imgexp.models.registry import register_model
from imgexp.runtime import checked_torchvision


@register_model(checks=(check_fractions("dropout"),))
def alexnet(in_channels: int, num_classes: int, image_size: tuple[int, int],
            dropout: float = 0.5) -> nn.Module:
    """``dropout``: in the classifier's two hidden layers."""
    torchvision = checked_torchvision()  # only when building: importing it costs a second

    model = torchvision.models.alexnet(weights=None, num_classes=num_classes, dropout=dropout)
    small = is_small(image_size)
    model.features[0] = stem_conv(model.features[0], in_channels, small)
    if small:
        model.features[2] = nn.Identity()  # the max-pool after the first conv
    return model
