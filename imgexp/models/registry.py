"""One door to every architecture: ``@register_model`` on a builder, ``create_model(cfg, info)`` to build."""
from __future__ import annotations

from typing import Callable

from torch import nn

from imgexp.config import ConfigError

MODELS: dict[str, Callable[..., nn.Module]] = {}


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Register ``fn(in_channels, num_classes, image_size, **cfg_fields) -> nn.Module`` under its name."""
    MODELS[fn.__name__] = fn
    return fn


def create_model(cfg, info) -> nn.Module:
    """Build ``cfg.name`` for the data's channels, classes and image size; other cfg fields are kwargs."""
    if cfg.name not in MODELS:
        raise ConfigError("model.name", f"unknown model {cfg.name!r}; known: {', '.join(sorted(MODELS))}")
    kwargs = {k: v for k, v in cfg.items() if k != "name"}
    return MODELS[cfg.name](
        in_channels=info.channels, num_classes=info.num_classes, image_size=(info.height, info.width), **kwargs
    )
