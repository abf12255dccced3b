"""torchvision's VGG-11/16/19, with and without batch norm. VGG has no stride-2 stem: small inputs keep
its five max-pools (CIFAR's 32 px end at 1x1, as in the usual CIFAR VGG), in ceil mode so 8x8 fits."""
from __future__ import annotations

from functools import partial

from torch import nn

from imgexp.models.layers import check_fractions, is_small, stem_conv
from imgexp.models.registry import register_model
from imgexp.runtime import checked_torchvision


def vgg(name: str, in_channels: int, num_classes: int, image_size: tuple[int, int],
        dropout: float = 0.5) -> nn.Module:
    """``dropout``: in the classifier's two hidden layers."""
    torchvision = checked_torchvision()  # only when building: importing it costs a second

    model = torchvision.models.get_model(name, weights=None, num_classes=num_classes, dropout=dropout)
    small = is_small(image_size)
    model.features[0] = stem_conv(model.features[0], in_channels, small)
    if small:
        for layer in model.features:
            if isinstance(layer, nn.MaxPool2d):
                layer.ceil_mode = True
    return model


for _name in ("vgg11", "vgg16", "vgg19", "vgg11_bn", "vgg16_bn", "vgg19_bn"):
    register_model(partial(vgg, _name), name=_name, checks=(check_fractions("dropout"),))
