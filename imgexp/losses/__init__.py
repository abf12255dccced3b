"""Losses from ``cfg.loss``: any ``_target_`` that builds ``loss(logits, targets) -> scalar``. A loss that needs
a layer's features (the K-means center loss) has ``attach(model)``, called here; one that reports
statistics has ``epoch_metrics()``, which the training loop logs every epoch."""
from __future__ import annotations

from hydra.utils import instantiate
from torch import nn


def build(cfg, model: nn.Module) -> nn.Module:
    loss = instantiate(cfg, _convert_="all")
    if hasattr(loss, "attach"):
        loss.attach(model)
    return loss
