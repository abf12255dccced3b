"""Batch iterators that yield ``(transform(x), y)`` on the training device.

:class:`TensorLoader` indexes images already in (device) memory: one index op per batch, no per-sample
Python. :class:`StreamLoader` decodes files in DataLoader worker processes (pinned memory, non-blocking
copies), for images too large to keep in memory. Both reshuffle every epoch from a seeded generator, and
both are resumable: ``state_dict()`` holds the shuffle generator as it was when the current pass began,
how many batches of it were taken, and the transform's generators (``rngs``, e.g. the augmentation's),
so a loader restored with ``load_state_dict`` continues the pass exactly where it stopped.
"""
from __future__ import annotations

import logging
from typing import Callable, Iterator, Optional, Sequence

import torch
from torch.utils.data import RandomSampler

from imgexp.data.decode import file_loader
from imgexp.data.sources import Files

log = logging.getLogger(__name__)
BatchTransform = Callable[[torch.Tensor], torch.Tensor]


class ResumableLoader:
    """Shuffle generator, position within the current pass, and the transform's generators."""

    def __init__(self, shuffle: bool, seed: int, rngs: Sequence[torch.Generator]) -> None:
        self.shuffle, self.rngs = shuffle, list(rngs)
        self.generator = torch.Generator().manual_seed(seed)
        self.position = 0  # batches taken from the current pass; 0 between passes
        self.pass_start: Optional[torch.Tensor] = None  # the generator's state when the current pass began
        self.skip = 0  # batches to pass over at the start of the next pass (a restored position)

    def begin_pass(self) -> int:
        """Call as a pass begins, before shuffling; returns how many batches to pass over."""
        self.pass_start = self.generator.get_state()
        skip, self.skip = self.skip, 0
        self.position = skip
        return skip

    def state_dict(self) -> dict:
        mid_pass = self.position > 0
        return {"generator": self.pass_start if mid_pass else self.generator.get_state(), "position": self.position,
                "rngs": [g.get_state() for g in self.rngs]}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
        self.skip = self.position = state["position"]
        self.pass_start = state["generator"] if self.position else None
        for g, s in zip(self.rngs, state["rngs"]):
            g.set_state(s)


class TensorLoader(ResumableLoader):
    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch: int, transform: BatchTransform,
                 shuffle: bool = False, seed: int = 0, rngs: Sequence[torch.Generator] = ()) -> None:
        super().__init__(shuffle, seed, rngs)
        self.x, self.y, self.batch, self.transform = x, y, batch, transform

    def __len__(self) -> int:
        return (len(self.y) + self.batch - 1) // self.batch

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n, skip = len(self.y), self.begin_pass()
        if self.shuffle:
            order = torch.randperm(n, generator=self.generator).to(self.x.device)
        for start in range(skip * self.batch, n, self.batch):
            if self.shuffle:
                idx = order[start : start + self.batch]
                xb, yb = self.x.index_select(0, idx), self.y.index_select(0, idx)  # 20x faster than x[idx]
            else:
                xb, yb = self.x[start : start + self.batch], self.y[start : start + self.batch]
            self.position += 1
            yield self.transform(xb), yb
        self.position = 0


class StreamLoader(ResumableLoader):
    def __init__(self, files: Files, size: tuple[int, int], channels: int, batch: int, transform: BatchTransform,
                 device: torch.device, num_workers: int, shuffle: bool = False, seed: int = 0,
                 rngs: Sequence[torch.Generator] = ()) -> None:
        super().__init__(shuffle, seed, rngs)
        self.transform, self.device = transform, device
        sampler = RandomSampler(range(len(files.paths)), generator=self.generator) if shuffle else None
        self.loader = file_loader(files, size, channels, batch, num_workers, sampler, device.type == "cuda")

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        skipped, skip = 0, self.begin_pass()
        for i, (x, y, dropped, _) in enumerate(self.loader):
            if i < skip:
                continue  # decoded again, but taken before the pass was interrupted
            skipped += dropped
            self.position += 1
            if x is not None:
                yield self.transform(x.to(self.device, non_blocking=True)), y.to(self.device, non_blocking=True)
        self.position = 0
        if skipped:
            log.warning("skipped %d unreadable image files this pass", skipped)
