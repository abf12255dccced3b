"""Report A's depth study: VGG-style blocks of 3x3 convs, each block max-pooled, then a dense head."""
from __future__ import annotations

from torch import nn

from imgexp.config import require
from imgexp.models.layers import check_norm, conv_unit
from imgexp.models.registry import register_model


def check_counts(cfg) -> None:
    for key in ("blocks", "convs_per_block", "dense"):
        require(getattr(cfg, key) >= 1, key, f"must be >= 1, got {getattr(cfg, key)}")


@register_model(checks=(check_norm, check_counts))
def vgg_style(
    in_channels: int,
    num_classes: int,
    image_size: tuple[int, int],
    blocks: int = 3,
    convs_per_block: int = 2,
    dense: int = 128,
    norm: str = "batch",
    norm_before_activation: bool = False,
) -> nn.Module:
    """Block i has ``convs_per_block`` convs of 32 * 2**i filters (32, 64, 128, 256, ...) and a 2x2
    max-pool (ceil mode, so 8x8 digits survive four blocks); flatten, dense + ReLU, classifier."""
    layers: list[nn.Module] = []
    c = in_channels
    for i in range(blocks):
        for _ in range(convs_per_block):
            layers.append(conv_unit(c, 32 * 2**i, norm, norm_before_activation))
            c = 32 * 2**i
        layers.append(nn.MaxPool2d(2, ceil_mode=True))
    h, w = (-(-side // 2**blocks) for side in image_size)  # ceil division, as the pools round up
    return nn.Sequential(
        nn.Sequential(*layers),
        nn.Flatten(),
        nn.Linear(c * h * w, dense),
        nn.ReLU(),
        nn.Linear(dense, num_classes),
    )
