"""Config schemas of the optimizer and scheduler groups (conf/optimizer/, conf/scheduler/): torch's
classes, instantiated with ``_partial_`` by :mod:`imgexp.optim`."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional

from omegaconf import MISSING

from imgexp.config import require, require_choice


@dataclass
class OptimizerConfig:
    _target_: str = MISSING
    _partial_: bool = True
    lr: float = 1e-3
    weight_decay: float = 0.0

    def __post_init__(self) -> None:
        require(self.lr > 0, "lr", f"must be > 0, got {self.lr}")
        require(self.weight_decay >= 0, "weight_decay", f"must be >= 0, got {self.weight_decay}")


@dataclass
class AdamConfig(OptimizerConfig):
    _target_: str = "torch.optim.Adam"
    betas: List[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8


@dataclass
class AdamWConfig(AdamConfig):
    _target_: str = "torch.optim.AdamW"
    weight_decay: float = 0.01


@dataclass
class SGDConfig(OptimizerConfig):
    _target_: str = "torch.optim.SGD"
    lr: float = 0.01
    momentum: float = 0.9
    nesterov: bool = False


@dataclass
class RMSpropConfig(OptimizerConfig):
    _target_: str = "torch.optim.RMSprop"
    alpha: float = 0.99
    momentum: float = 0.0
    eps: float = 1e-8


# ---------------------------------------------------------------- scheduler
SCHEDULER_INTERVALS = ("epoch", "step")


@dataclass
class SchedulerConfig:
    """``interval``: stepped after every epoch or every optimizer step. ``length_arg``: the constructor
    argument that receives the schedule's length in ``interval`` units (the run's, after warmup), e.g.
    OneCycleLR's ``total_steps``. Both are imgexp's keys, not the scheduler's."""

    _target_: Optional[str] = None
    _partial_: bool = True
    interval: str = "epoch"
    length_arg: Optional[str] = None

    def __post_init__(self) -> None:
        require_choice(self.interval, SCHEDULER_INTERVALS, "interval")


@dataclass
class OneCycleConfig(SchedulerConfig):
    _target_: Optional[str] = "torch.optim.lr_scheduler.OneCycleLR"
    interval: str = "step"
    length_arg: Optional[str] = "total_steps"
    max_lr: float = "${optimizer.lr}"  # type: ignore[assignment]
    pct_start: float = 0.25
    div_factor: float = 25.0
    final_div_factor: float = 1e4


@dataclass
class StepLRConfig(SchedulerConfig):
    _target_: Optional[str] = "torch.optim.lr_scheduler.StepLR"
    step_size: int = 10
    gamma: float = 0.1


@dataclass
class PlateauConfig(SchedulerConfig):
    _target_: Optional[str] = "torch.optim.lr_scheduler.ReduceLROnPlateau"
    mode: str = "min"
    factor: float = 0.1
    patience: int = 3


@dataclass
class CosineConfig(SchedulerConfig):
    _target_: Optional[str] = "torch.optim.lr_scheduler.CosineAnnealingLR"
    T_max: int = "${epochs}"  # type: ignore[assignment]
    eta_min: float = 0.0


@dataclass
class CosineStepConfig(SchedulerConfig):
    _target_: Optional[str] = "torch.optim.lr_scheduler.CosineAnnealingLR"
    interval: str = "step"
    length_arg: Optional[str] = "T_max"
    eta_min: float = 0.0


@dataclass
class ExponentialConfig(SchedulerConfig):
    _target_: Optional[str] = "torch.optim.lr_scheduler.ExponentialLR"
    gamma: float = 0.95


SCHEMAS = {
    "optimizer": {"adam": AdamConfig, "adamw": AdamWConfig, "sgd": SGDConfig, "rmsprop": RMSpropConfig},
    "scheduler": {
        "none": SchedulerConfig,
        "step": StepLRConfig,
        "plateau": PlateauConfig,
        "cosine": CosineConfig,
        "cosine_step": CosineStepConfig,
        "onecycle": OneCycleConfig,
        "exponential": ExponentialConfig,
    },
}
