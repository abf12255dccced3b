"""Losses from ``cfg.loss``: any ``_target_`` that builds ``loss(logits, targets) -> scalar``. A loss that needs
a layer's features (the K-means center loss) has ``attach(model)``, called here. The trainer calls two
optional hooks: ``start_epoch()`` at the start of every training epoch, and ``epoch_metrics()``, logged
every epoch; a loss's state (``state_dict``, extra state included) goes into the run's checkpoints."""
from __future__ import annotations

from hydra.utils import instantiate
from torch import nn


def build(cfg, model: nn.Module) -> nn.Module:
    loss = instantiate(cfg, _convert_="all")
    if hasattr(loss, "attach"):
        loss.attach(model)
    return loss
