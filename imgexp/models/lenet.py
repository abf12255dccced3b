"""Report E's LeNet-5: two 5x5 convs with average pooling, then dense layers of 120 and 84 units."""
from __future__ import annotations

from torch import nn

from imgexp.config import require_choice
from imgexp.models.layers import check_norm, conv_unit
from imgexp.models.registry import register_model

ACTIVATIONS = {"tanh": nn.Tanh, "relu": nn.ReLU}


def check_activation(cfg) -> None:
    require_choice(cfg.activation, tuple(ACTIVATIONS), "activation")


@register_model(checks=(check_norm, check_activation))
def lenet(
    in_channels: int,
    num_classes: int,
    image_size: tuple[int, int],
    activation: str = "tanh",
    norm: str = "none",
    norm_before_activation: bool = False,
) -> nn.Module:
    """C1: 6 same-padded 5x5 convs (28x28 MNIST then sees LeNet-5's 32x32 field), S2: 2x2 average pool,
    C3: 16 valid 5x5 convs (same-padded when S2's map is under 5 px, as for 8x8 digits), S4: 2x2 average
    pool, then dense 120, dense 84 and the classifier."""
    act = ACTIVATIONS[activation]
    c3_padding = 0 if min(image_size) // 2 >= 5 else 2
    h, w = ((side // 2 - 4 + 2 * c3_padding) // 2 for side in image_size)
    return nn.Sequential(
        conv_unit(in_channels, 6, norm, norm_before_activation, kernel_size=5, activation=act),
        nn.AvgPool2d(2),
        conv_unit(6, 16, norm, norm_before_activation, kernel_size=5, padding=c3_padding, activation=act),
        nn.AvgPool2d(2),
        nn.Flatten(),
        nn.Linear(16 * h * w, 120),
        act(),
        nn.Linear(120, 84),
        act(),
        nn.Linear(84, num_classes),
    )
