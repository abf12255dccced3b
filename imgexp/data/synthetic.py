"""Generated images for tests: a bright square on a noisy background; the square's position is the class."""
from __future__ import annotations

import math

import torch

from imgexp.data.sources import Images, Source, register_source


def square_positions(num_classes: int, size: int) -> list[tuple[int, int, int]]:
    """(top, left, side) of each class's square, on a grid that covers the image."""
    grid = math.ceil(math.sqrt(num_classes))
    cell = size // grid
    side = max(2, cell // 2)
    return [((k // grid) * cell + (cell - side) // 2, (k % grid) * cell + (cell - side) // 2, side)
            for k in range(num_classes)]


@register_source("synthetic")
def synthetic(cfg) -> Source:
    g = torch.Generator().manual_seed(cfg.split_seed)
    n, size, c = cfg.num_classes * cfg.samples_per_class, cfg.image_size, cfg.channels
    y = torch.arange(cfg.num_classes).repeat_interleave(cfg.samples_per_class)
    x = torch.randint(0, 96, (n, c, size, size), generator=g, dtype=torch.uint8)
    for k, (top, left, side) in enumerate(square_positions(cfg.num_classes, size)):
        x[y == k, :, top : top + side, left : left + side] = 255
    return Source(Images(x, y), [f"square{k}" for k in range(cfg.num_classes)])
