"""Config schema of the trainer group (conf/trainer/): how the training engine runs."""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import ClassVar, Optional

from imgexp.config import require, require_choice


PRECISIONS = ("fp32", "bf16", "fp16")


@dataclass
class TrainerConfig:
    """How the training engine runs: numerics, memory format, compilation, clipping, EMA, warmup."""

    # each epoch's metrics (imgexp.train.trainer), besides the loss's, which early_stop_metric may watch
    EPOCH_METRICS: ClassVar[tuple[str, ...]] = ("val/acc", "val/loss", "val/acc_best", "train/loss", "train/acc",
                                                "train/lr")

    precision: str = "fp32"  # fp32 | bf16 (autocast; CPU or GPU) | fp16 (autocast + GradScaler; CUDA only)
    channels_last: Optional[bool] = None  # NHWC memory format for conv nets; null: where it is faster (CPU, and
    # CUDA with bf16/fp16 autocast: imgexp.runtime.uses_channels_last)
    compile: bool = False  # torch.compile the model
    tf32: bool = True  # TF32 matmuls and convolutions on CUDA (fp32 runs only differ in the last bits)
    grad_clip: float = 0.0  # max gradient norm; 0 = off
    ema: float = 0.0  # decay of an exponential moving average of the weights, validated and tested; 0 = off
    warmup_epochs: int = 0  # linear learning-rate warmup before the scheduler starts ...
    warmup_steps: int = 0  # ... in epochs or in optimizer steps (one of the two)
    deterministic: bool = False  # deterministic algorithms; otherwise cudnn.benchmark picks the fastest
    devices: str = "1"  # ranks of one run (DDP) on each machine: N, or auto (every GPU to claim); batch: all ranks'
    nodes: int = 1  # machines one run spans: start the same command on each, with the same trainer.rendezvous
    rendezvous: Optional[str] = None  # HOST:PORT where the nodes meet (torchrun's --rdzv-endpoint, c10d), when nodes > 1
    rendezvous_timeout_s: int = 300  # how long a node waits for the others to join (or to reach the rendezvous)
    sync_bn: Optional[bool] = None  # SyncBatchNorm across the ranks; null: on when devices > 1 on CUDA
    early_stop_patience: int = 0  # stop once early_stop_metric has not improved for this many epochs; 0 = off
    early_stop_metric: str = "val/acc"  # a train/ or val/ metric; lower is better for a loss

    def __post_init__(self) -> None:
        require_choice(self.precision, PRECISIONS, "precision")
        require(self.grad_clip >= 0, "grad_clip", f"must be >= 0, got {self.grad_clip}")
        require(0.0 <= self.ema < 1.0, "ema", f"must be in [0, 1), got {self.ema}")
        require(self.warmup_epochs >= 0 and self.warmup_steps >= 0, "warmup_epochs", "warmup must be >= 0")
        require(not (self.warmup_epochs and self.warmup_steps), "warmup_steps",
                "give warmup_epochs or warmup_steps, not both")
        require(self.early_stop_patience >= 0, "early_stop_patience", "must be >= 0")
        require(self.devices == "auto" or (self.devices.isdigit() and int(self.devices) >= 1), "devices",
                f"must be a number >= 1 or auto, got {self.devices!r}")
        require(self.nodes >= 1, "nodes", f"must be >= 1, got {self.nodes}")
        require(self.nodes == 1 or re.fullmatch(r"[^\s:]+:\d+", self.rendezvous or "") is not None, "rendezvous",
                f"HOST:PORT of the rendezvous, which trainer.nodes={self.nodes} needs, got {self.rendezvous!r}")
        require(self.rendezvous_timeout_s >= 1, "rendezvous_timeout_s", "must be >= 1")


SCHEMAS = {"trainer": {"base": TrainerConfig}}
