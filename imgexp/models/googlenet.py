"""torchvision's GoogLeNet with its two auxiliary classifiers. It returns the logits in both modes; in
train mode it keeps the auxiliary classifiers' logits, whose cross-entropy (weight 0.3) the trainer adds
to the loss through :meth:`GoogLeNet.auxiliary_loss`. Small inputs: conv1 3x3 stride 1 and no stem
max-pools, so 32 px reach the inception blocks at 32, 16 and 8 px."""
from __future__ import annotations

from functools import cache

import torch
import torch.nn.functional as F
from torch import nn

from imgexp.models.layers import check_fractions, is_small, stem_conv
from imgexp.models.registry import register_model
from imgexp.runtime import checked_torchvision

AUX_WEIGHT = 0.3  # as in the GoogLeNet paper


@cache
def googlenet_class() -> type[nn.Module]:
    """torchvision's GoogLeNet keeping the auxiliary logits; defined on first use, as importing torchvision
    costs a second."""
    torchvision = checked_torchvision()

    class GoogLeNet(torchvision.models.GoogLeNet):
        def eager_outputs(self, x: torch.Tensor, aux2, aux1) -> torch.Tensor:
            self.aux = (aux1, aux2) if self.training else ()
            return x

        def auxiliary_loss(self, targets: torch.Tensor) -> torch.Tensor:
            """The auxiliary classifiers' weighted cross-entropy on the last training forward pass."""
            return AUX_WEIGHT * sum(F.cross_entropy(a.float(), targets) for a in self.aux)

    return GoogLeNet


@register_model(head=("fc", "aux1.fc2", "aux2.fc2"), checks=(check_fractions("dropout"),))
def googlenet(in_channels: int, num_classes: int, image_size: tuple[int, int],
              dropout: float = 0.2) -> nn.Module:
    """``dropout``: before the classifier."""
    model = googlenet_class()(num_classes=num_classes, aux_logits=True, init_weights=True, dropout=dropout)
    small = is_small(image_size)
    model.conv1.conv = stem_conv(model.conv1.conv, in_channels, small)
    if small:
        model.maxpool1, model.maxpool2 = nn.Identity(), nn.Identity()
    return model
