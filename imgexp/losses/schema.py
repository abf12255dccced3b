"""Config schemas of the loss group (conf/loss/)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Optional

from omegaconf import MISSING

from imgexp.config import require


@dataclass
class LossConfig:
    _target_: str = MISSING
    EPOCH_METRICS: ClassVar[tuple[str, ...]] = ()  # what the loss adds to each epoch's metrics


@dataclass
class CrossEntropyConfig(LossConfig):
    _target_: str = "torch.nn.CrossEntropyLoss"
    label_smoothing: float = 0.0

    def __post_init__(self) -> None:
        require(0.0 <= self.label_smoothing < 1.0, "label_smoothing", "must be in [0, 1)")


@dataclass
class KMeansCenterConfig(LossConfig):
    """Report D's K-means center loss (imgexp/losses/kmeans_center.py)."""

    _target_: str = "imgexp.losses.kmeans_center.KMeansCenterLoss"
    EPOCH_METRICS: ClassVar[tuple[str, ...]] = ("train/center_intra", "train/center_inter", "train/center_ratio")
    lambda_intra: float = 0.1
    lambda_inter: float = 0.1
    margin: float = 1.0
    layer: Optional[str] = None  # module name; None: the input of the last nn.Linear (penultimate features)
    refresh_steps: int = 0  # refresh the centers every N steps; 0: at the start of every epoch
    memory: int = 4096  # training features kept for K-means
    kmeans_steps: int = 5
    label_smoothing: float = 0.0

    def __post_init__(self) -> None:
        for key in ("lambda_intra", "lambda_inter", "margin"):
            require(getattr(self, key) >= 0, key, "must be >= 0")
        require(self.refresh_steps >= 0, "refresh_steps", "must be >= 0")
        require(self.memory > 0 and self.kmeans_steps >= 0, "memory", "memory must be > 0, kmeans_steps >= 0")


SCHEMAS = {"loss": {"cross_entropy": CrossEntropyConfig, "kmeans_center": KMeansCenterConfig}}
