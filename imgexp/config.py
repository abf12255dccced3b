"""Structured-config schemas: one dataclass per config-group option, registered in Hydra's ConfigStore.

Every YAML under ``conf/<group>/`` pulls its schema in with ``- /schema/<group>/<name>@_here_``, so
Hydra rejects unknown keys and wrong types while composing, and :func:`validate` checks value ranges
(``batch=0``) through each dataclass's ``__post_init__``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf


class ConfigError(ValueError):
    """A config value out of range; ``key`` is its dotted path."""

    def __init__(self, key: str, reason: str) -> None:
        super().__init__(f"{key}: {reason}")
        self.key, self.reason = key, reason


def require(ok: bool, key: str, reason: str) -> None:
    if not ok:
        raise ConfigError(key, reason)


def require_choice(value: str, choices: tuple[str, ...], key: str) -> None:
    require(value in choices, key, f"must be one of {', '.join(choices)}, got {value!r}")


# ---------------------------------------------------------------- model
NORMS = ("batch", "layer", "instance", "group", "none")


@dataclass
class ModelConfig:
    name: str = MISSING
    norm: str = "batch"
    norm_before_activation: bool = False

    def __post_init__(self) -> None:
        require_choice(self.norm, NORMS, "norm")


@dataclass
class SmallCNNConfig(ModelConfig):
    name: str = "small_cnn"
    widths: List[int] = field(default_factory=lambda: [64, 128, 256])
    dense: int = 512
    dropout: float = 0.25
    dense_dropout: float = 0.5

    def __post_init__(self) -> None:
        super().__post_init__()
        require(len(self.widths) > 0 and min(self.widths) > 0, "widths", "must be positive channel counts")
        for key in ("dropout", "dense_dropout"):
            require(0.0 <= getattr(self, key) < 1.0, key, "must be in [0, 1)")


# ---------------------------------------------------------------- data
@dataclass
class DataConfig:
    name: str = MISSING
    root: Optional[str] = None
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    split_seed: int = 0
    subset: Optional[int] = None

    def __post_init__(self) -> None:
        for key in ("val_fraction", "test_fraction"):
            require(0.0 < getattr(self, key) < 1.0, key, "must be in (0, 1)")
        require(self.val_fraction + self.test_fraction < 1.0, "val_fraction", "val + test fractions must be < 1")
        require(self.subset is None or self.subset > 0, "subset", "must be a positive number of images")


# ---------------------------------------------------------------- augmentation / normalization
@dataclass
class AugmentationConfig:
    name: str = "none"


@dataclass
class NormalizationConfig:
    name: str = MISSING

    def __post_init__(self) -> None:
        require_choice(self.name, ("none", "rescale", "standardize", "imagenet"), "name")


# ---------------------------------------------------------------- optimizer (instantiated with _partial_)
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


# ---------------------------------------------------------------- scheduler (stepped once per epoch)
@dataclass
class SchedulerConfig:
    _target_: Optional[str] = None
    _partial_: bool = True


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
class ExponentialConfig(SchedulerConfig):
    _target_: Optional[str] = "torch.optim.lr_scheduler.ExponentialLR"
    gamma: float = 0.95


# ---------------------------------------------------------------- loss
@dataclass
class LossConfig:
    _target_: str = MISSING


@dataclass
class CrossEntropyConfig(LossConfig):
    _target_: str = "torch.nn.CrossEntropyLoss"
    label_smoothing: float = 0.0

    def __post_init__(self) -> None:
        require(0.0 <= self.label_smoothing < 1.0, "label_smoothing", "must be in [0, 1)")


# ---------------------------------------------------------------- tracking
@dataclass
class TrackingConfig:
    enabled: bool = True
    uri: Optional[str] = None  # None: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db in the working directory
    experiment: str = "imgexp"
    run_name: Optional[str] = None


# ---------------------------------------------------------------- root
@dataclass
class Config:
    model: Any = MISSING
    data: Any = MISSING
    augmentation: Any = MISSING
    normalization: Any = MISSING
    optimizer: Any = MISSING
    scheduler: Any = MISSING
    loss: Any = MISSING
    tracking: Any = MISSING
    epochs: int = 10
    batch: int = 64
    seed: int = 0
    device: str = "auto"
    topk: int = 2
    optimized_metric: str = "val/acc_best"
    progress: bool = True

    def __post_init__(self) -> None:
        require(self.epochs >= 1, "epochs", f"must be >= 1, got {self.epochs}")
        require(self.batch >= 1, "batch", f"must be >= 1, got {self.batch}")
        require(self.topk >= 1, "topk", f"must be >= 1, got {self.topk}")
        require(self.optimized_metric.split("/")[0] in ("train", "val", "test"), "optimized_metric",
                f"must be a train/, val/ or test/ metric, got {self.optimized_metric!r}")
        require(
            self.device in ("auto", "cpu", "mps") or self.device.startswith("cuda"),
            "device",
            f"must be auto, cpu, mps or cuda[:N], got {self.device!r}",
        )


SCHEMAS = {
    "model": {"small_cnn": SmallCNNConfig},
    "data": {"base": DataConfig},
    "augmentation": {"base": AugmentationConfig},
    "normalization": {"base": NormalizationConfig},
    "optimizer": {"adam": AdamConfig, "adamw": AdamWConfig, "sgd": SGDConfig, "rmsprop": RMSpropConfig},
    "scheduler": {
        "none": SchedulerConfig,
        "step": StepLRConfig,
        "plateau": PlateauConfig,
        "cosine": CosineConfig,
        "exponential": ExponentialConfig,
    },
    "loss": {"cross_entropy": CrossEntropyConfig},
    "tracking": {"base": TrackingConfig},
}


def register() -> None:
    """Store the root schema as ``config_schema`` and each option's schema under ``schema/<group>/``."""
    cs = ConfigStore.instance()
    cs.store(name="config_schema", node=Config)
    for group, options in SCHEMAS.items():
        for name, node in options.items():
            cs.store(group=f"schema/{group}", name=name, node=node)


def validate(cfg: DictConfig) -> None:
    """Run every schema's range checks; raise :class:`ConfigError` naming the full key."""
    for key, node in cfg.items():
        if OmegaConf.is_dict(node) and OmegaConf.get_type(node) not in (dict, None):
            try:
                OmegaConf.to_object(node)
            except ConfigError as err:
                raise ConfigError(f"{key}.{err.key}", err.reason) from None
    OmegaConf.to_object(cfg)  # the root schema checks the top-level keys
