"""torchvision's GoogLeNet with its two auxiliary classifiers. In train mode it returns
``GoogLeNetOutputs(logits, aux_logits2, aux_logits1)``, whose auxiliary losses the training loop adds
(weight 0.3); in eval mode the logits. Small inputs: conv1 3x3 stride 1 and no stem max-pools, so 32 px
reach the inception blocks at 32, 16 and 8 px."""
from __future__ import annotations

import torchvision
from torch import nn

from imgexp.models.layers import is_small, stem_conv
from imgexp.models.registry import register_model


@register_model(head=("fc", "aux1.fc2", "aux2.fc2"))
def googlenet(in_channels: int, num_classes: int, image_size: tuple[int, int], **kwargs) -> nn.Module:
    """``kwargs``: the YAML's torchvision arguments (``dropout``)."""
    model = torchvision.models.googlenet(
        weights=None, num_classes=num_classes, aux_logits=True, init_weights=True, **kwargs
    )
    small = is_small(image_size)
    model.conv1.conv = stem_conv(model.conv1.conv, in_channels, small)
    if small:
        model.maxpool1, model.maxpool2 = nn.Identity(), nn.Identity()
    return model
