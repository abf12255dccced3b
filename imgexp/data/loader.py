"""Batches from tensors held on the training device: one index per batch, no per-sample Python."""
from __future__ import annotations

from typing import Callable, Iterator, Optional

import torch

BatchTransform = Callable[[torch.Tensor], torch.Tensor]


class TensorLoader:
    """Iterate ``(transform(x[idx]), y[idx])`` over a uint8 image tensor, reshuffled every epoch when asked."""

    def __init__(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        batch: int,
        transform: BatchTransform,
        shuffle: bool = False,
        seed: int = 0,
    ) -> None:
        self.x, self.y, self.batch, self.transform, self.shuffle = x, y, batch, transform, shuffle
        self.generator: Optional[torch.Generator] = torch.Generator().manual_seed(seed) if shuffle else None

    def __len__(self) -> int:
        return (len(self.y) + self.batch - 1) // self.batch

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n = len(self.y)
        order = torch.randperm(n, generator=self.generator).to(self.x.device) if self.shuffle else None
        for start in range(0, n, self.batch):
            if order is None:
                xb, yb = self.x[start : start + self.batch], self.y[start : start + self.batch]
            else:
                idx = order[start : start + self.batch]
                xb, yb = self.x[idx], self.y[idx]
            yield self.transform(xb), yb
