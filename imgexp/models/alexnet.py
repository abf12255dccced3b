"""torchvision's AlexNet; small inputs get a 3x3 stride-1 first conv and lose the first max-pool."""
from __future__ import annotations

import torchvision
from torch import nn

from imgexp.models.layers import is_small, stem_conv
from imgexp.models.registry import register_model


@register_model
def alexnet(in_channels: int, num_classes: int, image_size: tuple[int, int], **kwargs) -> nn.Module:
    """``kwargs``: the YAML's torchvision arguments (``dropout``)."""
    model = torchvision.models.alexnet(weights=None, num_classes=num_classes, **kwargs)
    small = is_small(image_size)
    model.features[0] = stem_conv(model.features[0], in_channels, small)
    if small:
        model.features[2] = nn.Identity()  # the max-pool after the first conv
    return model
