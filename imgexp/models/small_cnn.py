"""Report D's Keras CNN in PyTorch: (conv-norm-conv-pool-drop) x2, conv-norm-pool-drop, GAP, dense, dense."""
from __future__ import annotations

from torch import nn

from imgexp.config import require
from imgexp.models.layers import check_fractions, check_norm, conv_unit
from imgexp.models.registry import register_model


def check_widths(cfg) -> None:
    require(len(cfg.widths) > 0 and min(cfg.widths) > 0, "widths", "must be positive channel counts")


@register_model(checks=(check_norm, check_widths, check_fractions("dropout", "dense_dropout")))
def small_cnn(
    in_channels: int,
    num_classes: int,
    image_size: tuple[int, int],
    widths: list[int] = (64, 128, 256),
    dense: int = 512,
    dropout: float = 0.25,
    dense_dropout: float = 0.5,
    norm: str = "batch",
    norm_before_activation: bool = False,
) -> nn.Module:
    """Every block but the last has two convs with a norm layer after the first; each block halves the
    size. Global average pooling makes it work for any input size of at least 2**len(widths) pixels."""
    layers: list[nn.Module] = []
    c = in_channels
    for i, w in enumerate(widths):
        layers.append(conv_unit(c, w, norm, norm_before_activation))
        if i < len(widths) - 1:
            layers.append(conv_unit(w, w))
        layers += [nn.MaxPool2d(2), nn.Dropout(dropout)]
        c = w
    return nn.Sequential(
        nn.Sequential(*layers),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(c, dense),
        nn.ReLU(),
        nn.Dropout(dense_dropout),
        nn.Linear(dense, num_classes),
    )
