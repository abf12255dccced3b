"""Optimizer and learning-rate scheduler from ``cfg.optimizer`` / ``cfg.scheduler`` (``_partial_`` targets)."""
from __future__ import annotations

from typing import Iterable, Optional

import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

IMGEXP_KEYS = ("interval", "length_arg")  # scheduler schema keys that are imgexp's, not the scheduler's


def build_optimizer(cfg, params: Iterable[torch.nn.Parameter]) -> torch.optim.Optimizer:
    return instantiate(cfg, _convert_="all")(params)


def build_scheduler(cfg, optimizer: torch.optim.Optimizer, length: int) -> Optional[object]:
    """None for ``scheduler=none``. ``length`` is the schedule's length in ``cfg.interval`` units (epochs or
    optimizer steps, after warmup); it goes to the constructor argument ``cfg.length_arg`` names."""
    if cfg._target_ is None:
        return None
    kwargs = {k: v for k, v in OmegaConf.to_container(cfg, resolve=True).items() if k not in IMGEXP_KEYS}
    if cfg.length_arg:
        kwargs[cfg.length_arg] = max(1, length)
    return instantiate(kwargs, _convert_="all")(optimizer)
