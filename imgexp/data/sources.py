"""Data-source registry. A source reads ``cfg.data`` and returns a :class:`Source`: labelled images in
memory (:class:`Images`) or on disk (:class:`Files`), as one set or with its own test (and val) split."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Union

import numpy as np
import torch

from imgexp.config import ConfigError


@dataclass
class Images:
    """Decoded images: uint8 (N, C, H, W) and int64 labels (N,)."""

    x: torch.Tensor
    y: torch.Tensor

    def take(self, idx: np.ndarray) -> "Images":
        i = torch.as_tensor(idx, dtype=torch.long)
        return Images(self.x[i], self.y[i])


@dataclass
class Files:
    """Image files and their int64 labels (N,), decoded on demand."""

    paths: list[str]
    y: torch.Tensor

    def take(self, idx: np.ndarray) -> "Files":
        return Files([self.paths[i] for i in idx], self.y[torch.as_tensor(idx, dtype=torch.long)])


Samples = Union[Images, Files]


@dataclass
class Source:
    """Everything a source provides; a missing test or val split is carved out of train."""

    train: Samples
    class_names: list[str]
    test: Optional[Samples] = None
    val: Optional[Samples] = None


SOURCES: dict[str, Callable[..., Source]] = {}


def register_source(name: str) -> Callable[[Callable[..., Source]], Callable[..., Source]]:
    """Decorator: make ``fn(cfg) -> Source`` the loader for ``data.name == name``."""

    def add(fn: Callable[..., Source]) -> Callable[..., Source]:
        SOURCES[name] = fn
        return fn

    return add


def load_source(cfg) -> Source:
    if cfg.name not in SOURCES:
        raise ConfigError("data.name", f"unknown data source {cfg.name!r}; known: {', '.join(sorted(SOURCES))}")
    return SOURCES[cfg.name](cfg)
