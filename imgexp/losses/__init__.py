"""Losses from ``cfg.loss``: any ``_target_`` that builds ``loss(logits, targets) -> scalar``."""
from __future__ import annotations

from hydra.utils import instantiate
from torch import nn


def build(cfg) -> nn.Module:
    return instantiate(cfg, _convert_="all")
