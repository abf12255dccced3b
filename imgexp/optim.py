"""Optimizer and learning-rate scheduler from ``cfg.optimizer`` / ``cfg.scheduler`` (``_partial_`` targets)."""
from __future__ import annotations

from typing import Iterable, Optional

import torch
from hydra.utils import instantiate


def build_optimizer(cfg, params: Iterable[torch.nn.Parameter]) -> torch.optim.Optimizer:
    return instantiate(cfg, _convert_="all")(params)


def build_scheduler(cfg, optimizer: torch.optim.Optimizer) -> Optional[object]:
    """None for ``scheduler=none``; the scheduler is stepped once per epoch by the training loop."""
    if cfg._target_ is None:
        return None
    return instantiate(cfg, _convert_="all")(optimizer)
