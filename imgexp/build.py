"""Build one run from its validated config: seed, then data, model, loss, optimizer, schedule and the
:class:`~imgexp.train.Trainer` that holds them (config -> build, the first step of a run)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
from omegaconf import DictConfig

from imgexp import data as data_lib
from imgexp import losses
from imgexp.config import ConfigError
from imgexp.models import create_model
from imgexp.optim import build_optimizer, build_scheduler
from imgexp.runtime import configure_torch, resolve_device, seed_everything, uses_channels_last
from imgexp.train import Schedule, Trainer
from imgexp.train.ranks import Ranks


@dataclass
class Job:
    """Everything one training run is built from."""

    data: data_lib.Data
    trainer: Trainer


def build(cfg: DictConfig, checkpoint_dir: str | Path, device: Optional[torch.device] = None,
          ranks: Ranks = Ranks()) -> Job:
    """Seed, and build data, model, loss, optimizer, schedule and trainer from a validated ``cfg``, for rank
    ``ranks.rank`` of the run on ``device`` (default: ``cfg.device``'s)."""
    device = device or resolve_device(cfg.device)
    seed_everything(cfg.seed)
    configure_torch(cfg.trainer, device)
    shard = data_lib.Shard(ranks.rank, ranks.world)
    data = data_lib.build(cfg.data, cfg.augmentation, cfg.normalization, cfg.batch, cfg.seed, device, shard)
    if cfg.topk > data.info.num_classes:
        raise ConfigError("topk", f"{cfg.topk} is more than the data's {data.info.num_classes} classes")
    model = create_model(cfg.model, data.info)
    t = cfg.trainer
    if ranks.world > 1 and (t.sync_bn or (t.sync_bn is None and device.type == "cuda")):
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model = model.to(device)
    optimizer = build_optimizer(cfg.optimizer, [p for p in model.parameters() if p.requires_grad])
    steps_per_epoch = len(data.train)
    warmup = t.warmup_steps or t.warmup_epochs * steps_per_epoch
    length = {"step": cfg.epochs * steps_per_epoch - warmup, "epoch": cfg.epochs - -(-warmup // steps_per_epoch)}
    scheduler = build_scheduler(cfg.scheduler, optimizer, length[cfg.scheduler.interval])
    trainer = Trainer(model, losses.build(cfg.loss, model), optimizer,
                      Schedule(optimizer, scheduler, cfg.scheduler.interval, warmup),
                      data.train, data.val, data.test, epochs=cfg.epochs, checkpoint_dir=checkpoint_dir,
                      precision=t.precision, channels_last=uses_channels_last(t, device), compile=t.compile,
                      grad_clip=t.grad_clip, ema=t.ema, topk=cfg.topk, progress=cfg.progress,
                      early_stop=(t.early_stop_patience, t.early_stop_metric), ranks=ranks)
    return Job(data, trainer)
