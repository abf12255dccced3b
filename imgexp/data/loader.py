"""Batch iterators that yield ``(transform(x), y)`` on the training device.

:class:`TensorLoader` indexes images already in (device) memory: one index op per batch, no per-sample
Python. :class:`StreamLoader` decodes files in DataLoader worker processes, for images too large to
keep in memory. Both reshuffle every epoch from a seeded generator.
"""
from __future__ import annotations

import logging
from typing import Callable, Iterator

import torch

from imgexp.data.decode import file_loader
from imgexp.data.sources import Files

log = logging.getLogger(__name__)
BatchTransform = Callable[[torch.Tensor], torch.Tensor]


class TensorLoader:
    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch: int, transform: BatchTransform,
                 shuffle: bool = False, seed: int = 0) -> None:
        self.x, self.y, self.batch, self.transform, self.shuffle = x, y, batch, transform, shuffle
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return (len(self.y) + self.batch - 1) // self.batch

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n = len(self.y)
        if self.shuffle:
            order = torch.randperm(n, generator=self.generator).to(self.x.device)
        for start in range(0, n, self.batch):
            if self.shuffle:
                idx = order[start : start + self.batch]
                xb, yb = self.x.index_select(0, idx), self.y.index_select(0, idx)  # 20x faster than x[idx]
            else:
                xb, yb = self.x[start : start + self.batch], self.y[start : start + self.batch]
            yield self.transform(xb), yb


class StreamLoader:
    def __init__(self, files: Files, size: tuple[int, int], channels: int, batch: int, transform: BatchTransform,
                 device: torch.device, num_workers: int, shuffle: bool = False, seed: int = 0) -> None:
        self.transform, self.device = transform, device
        self.loader = file_loader(files, size, channels, batch, num_workers, shuffle,
                                  torch.Generator().manual_seed(seed))

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        skipped = 0
        for x, y, dropped in self.loader:
            skipped += dropped
            if x is not None:
                yield self.transform(x.to(self.device, non_blocking=True)), y.to(self.device)
        if skipped:
            log.warning("skipped %d unreadable image files this pass", skipped)
