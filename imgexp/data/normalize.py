"""Per-channel normalization of uint8 batches: none, rescale (1/255), standardize (train stats), imagenet."""
from __future__ import annotations

import torch

NORMALIZATIONS = ("none", "rescale", "standardize", "imagenet")  # the cases of channel_stats
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def channel_stats(name: str, train_x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and std (shape (1, C, 1, 1), in 0..255 pixel units) that ``(x - mean) / std`` uses."""
    c = train_x.shape[1]
    if name == "none":
        mean, std = torch.zeros(c), torch.ones(c)
    elif name == "rescale":
        mean, std = torch.zeros(c), torch.full((c,), 255.0)
    elif name == "standardize":  # sums over chunks of images: float64 copies of the whole set would be 8x its size
        n, total, squares = 0, torch.zeros(c, dtype=torch.float64), torch.zeros(c, dtype=torch.float64)
        for chunk in train_x.split(256):
            flat = chunk.transpose(0, 1).reshape(c, -1).double()
            n, total, squares = n + flat.shape[1], total + flat.sum(1), squares + flat.square().sum(1)
        mean64 = total / n
        var = (squares - n * mean64.square()) / max(n - 1, 1)
        mean, std = mean64.float(), var.clamp_min(0).sqrt().float().clamp_min(1e-6)
    elif name == "imagenet":
        mean = torch.tensor(IMAGENET_MEAN[:c] if c == 3 else [sum(IMAGENET_MEAN) / 3] * c) * 255
        std = torch.tensor(IMAGENET_STD[:c] if c == 3 else [sum(IMAGENET_STD) / 3] * c) * 255
    else:
        raise ValueError(f"unknown normalization {name!r}")
    return mean.view(1, c, 1, 1), std.view(1, c, 1, 1)
