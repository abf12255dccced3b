"""Data-source registry: a source turns ``cfg.data`` into uint8 images (N, C, H, W), labels and class names."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from imgexp.config import ConfigError


@dataclass
class Images:
    """A whole labelled image set in memory."""

    x: torch.Tensor  # uint8 (N, C, H, W)
    y: torch.Tensor  # int64 (N,)
    class_names: list[str]


SOURCES: dict[str, Callable[..., Images]] = {}


def register_source(name: str) -> Callable[[Callable[..., Images]], Callable[..., Images]]:
    """Decorator: make ``fn(cfg) -> Images`` the loader for ``data.name == name``."""

    def add(fn: Callable[..., Images]) -> Callable[..., Images]:
        SOURCES[name] = fn
        return fn

    return add


def load_source(cfg) -> Images:
    if cfg.name not in SOURCES:
        raise ConfigError("data.name", f"unknown data source {cfg.name!r}; known: {', '.join(sorted(SOURCES))}")
    return SOURCES[cfg.name](cfg)
