"""torchvision's ResNets and ResNeXt; small inputs get the CIFAR stem (conv1 3x3 stride 1, no max-pool)."""
from __future__ import annotations

from functools import partial

from torch import nn

from imgexp.models.layers import is_small, stem_conv
from imgexp.models.registry import register_model
from imgexp.runtime import checked_torchvision


def resnet(name: str, in_channels: int, num_classes: int, image_size: tuple[int, int]) -> nn.Module:
    torchvision = checked_torchvision()  # only when building: importing it costs a second

    model = torchvision.models.get_model(name, weights=None, num_classes=num_classes)
    small = is_small(image_size)
    model.conv1 = stem_conv(model.conv1, in_channels, small)
    if small:
        model.maxpool = nn.Identity()
    return model


for _name in ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "resnext50_32x4d"):
    register_model(partial(resnet, _name), name=_name)
