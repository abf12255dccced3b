"""Structured-config schemas: one dataclass per config-group option, registered in Hydra's ConfigStore.

Every YAML under ``conf/<group>/`` pulls its schema in with ``- /schema/<group>/<name>@_here_``, so
Hydra rejects unknown keys and wrong types while composing, and :func:`validate` checks value ranges
(``batch=0``) through each dataclass's ``__post_init__``.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, fields
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
    """Every model: ``pretrained`` loads torchvision's ImageNet weights, ``weights`` a local state dict
    (after ``pretrained``), ``freeze_backbone`` leaves only the classifier head trainable."""

    name: str = MISSING
    pretrained: bool = False
    weights: Optional[str] = None
    freeze_backbone: bool = False


@dataclass
class CNNConfig(ModelConfig):
    """The CNNs written here, whose norm layer is configurable."""

    norm: str = "batch"
    norm_before_activation: bool = False

    def __post_init__(self) -> None:
        require_choice(self.norm, NORMS, "norm")


@dataclass
class SmallCNNConfig(CNNConfig):
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


@dataclass
class VGGStyleConfig(CNNConfig):
    name: str = "vgg_style"
    blocks: int = 3
    convs_per_block: int = 2
    dense: int = 128

    def __post_init__(self) -> None:
        super().__post_init__()
        for key in ("blocks", "convs_per_block", "dense"):
            require(getattr(self, key) >= 1, key, f"must be >= 1, got {getattr(self, key)}")


@dataclass
class LeNetConfig(CNNConfig):
    name: str = "lenet"
    norm: str = "none"
    activation: str = "tanh"

    def __post_init__(self) -> None:
        super().__post_init__()
        require_choice(self.activation, ("tanh", "relu"), "activation")


@dataclass
class MobileNetV1Config(CNNConfig):
    name: str = "mobilenet_v1"
    norm_before_activation: bool = True
    width_multiplier: float = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.width_multiplier > 0, "width_multiplier", f"must be > 0, got {self.width_multiplier}")


@dataclass
class TorchvisionConfig(ModelConfig):
    """A torchvision architecture, adapted to the data's channels, classes and image size."""


@dataclass
class TorchvisionDropoutConfig(TorchvisionConfig):
    """A torchvision architecture with dropout before its classifier."""

    dropout: float = 0.2

    def __post_init__(self) -> None:
        require(0.0 <= self.dropout < 1.0, "dropout", "must be in [0, 1)")


# ---------------------------------------------------------------- data
@dataclass
class DataConfig:
    name: str = MISSING
    root: Optional[str] = None  # where the files are (or go, with download=true)
    download: bool = False  # torchvision data sets only
    val_fraction: float = 0.15  # of the whole set, or of train when the source has its own test split
    test_fraction: float = 0.15  # used only when the source has no test split of its own
    split_seed: int = 0
    subset: Optional[int] = None  # N training images (stratified sample); val/test shrink in proportion
    image_size: Optional[int] = None  # resize to image_size x image_size; None keeps the source's size
    channels: Optional[int] = None  # 1 or 3: convert (RGB <-> luminance); None keeps the source's
    num_workers: int = 2  # decoding processes
    in_memory_max_px: int = 64  # images up to this size are decoded once and kept in memory
    cache_dir: Optional[str] = None  # decoded-image cache; None: $XDG_CACHE_HOME/imgexp or ~/.cache/imgexp

    def __post_init__(self) -> None:
        for key in ("val_fraction", "test_fraction"):
            require(0.0 < getattr(self, key) < 1.0, key, "must be in (0, 1)")
        require(self.val_fraction + self.test_fraction < 1.0, "val_fraction", "val + test fractions must be < 1")
        require(self.subset is None or self.subset > 0, "subset", "must be a positive number of images")
        require(self.image_size is None or self.image_size > 0, "image_size", "must be > 0")
        require(self.channels in (None, 1, 3), "channels", f"must be 1 or 3, got {self.channels}")
        require(self.num_workers >= 0, "num_workers", "must be >= 0")


@dataclass
class SyntheticDataConfig(DataConfig):
    """Generated images: a bright square on noise, its position set by the class."""

    name: str = "synthetic"
    num_classes: int = 4
    samples_per_class: int = 64
    image_size: Optional[int] = 32
    channels: Optional[int] = 3

    def __post_init__(self) -> None:
        super().__post_init__()
        require(2 <= self.num_classes <= 16, "num_classes", "must be in 2..16")
        require(self.samples_per_class >= 4, "samples_per_class", "must be >= 4")
        require(self.image_size is not None and self.image_size >= 8, "image_size", "must be >= 8")


@dataclass
class ImagenetSubsetConfig(DataConfig):
    """An ImageNet-style tree (train/<wnid>/, val/<wnid>/) cut to a few classes."""

    name: str = "imagenet_subset"
    num_classes: int = 10  # the first N class folders in sorted order ...
    classes: Optional[List[str]] = None  # ... or exactly these
    image_size: Optional[int] = 224

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.num_classes >= 2, "num_classes", "must be >= 2")


# ---------------------------------------------------------------- augmentation / normalization
@dataclass
class AugmentationConfig:
    """Random transforms drawn per sample, applied to a whole batch at once on the training device."""

    name: str = "none"
    rotation: float = 0.0  # degrees: angle drawn from [-rotation, rotation]
    translate: float = 0.0  # fraction of width/height: shift drawn from [-translate, translate]
    shear: float = 0.0  # degrees
    zoom: float = 0.0  # scale drawn from [1 - zoom, 1 + zoom]
    hflip: bool = False
    vflip: bool = False
    crop_padding: int = 0  # pad by this many pixels, then take a random crop of the original size
    fill: str = "constant"  # outside the image: constant (0), nearest (edge pixel, Keras' default), reflect

    def __post_init__(self) -> None:
        for key in ("rotation", "translate", "shear", "zoom"):
            require(getattr(self, key) >= 0, key, "must be >= 0")
        require(self.zoom < 1.0, "zoom", "must be < 1")
        require(self.crop_padding >= 0, "crop_padding", "must be >= 0")
        require_choice(self.fill, ("constant", "nearest", "reflect"), "fill")


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


@dataclass
class KMeansCenterConfig(LossConfig):
    """Report D's K-means center loss (imgexp/losses/kmeans_center.py)."""

    _target_: str = "imgexp.losses.kmeans_center.KMeansCenterLoss"
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


# ---------------------------------------------------------------- trainer
PRECISIONS = ("fp32", "bf16", "fp16")


@dataclass
class TrainerConfig:
    """How the training engine runs: numerics, memory format, compilation, clipping, EMA, warmup."""

    precision: str = "fp32"  # fp32 | bf16 (autocast; CPU or GPU) | fp16 (autocast + GradScaler; CUDA only)
    channels_last: bool = False  # NHWC memory format for conv nets
    compile: bool = False  # torch.compile the model
    tf32: bool = True  # TF32 matmuls and convolutions on CUDA (fp32 runs only differ in the last bits)
    grad_clip: float = 0.0  # max gradient norm; 0 = off
    ema: float = 0.0  # decay of an exponential moving average of the weights, validated and tested; 0 = off
    warmup_epochs: int = 0  # linear learning-rate warmup before the scheduler starts ...
    warmup_steps: int = 0  # ... in epochs or in optimizer steps (one of the two)
    deterministic: bool = False  # deterministic algorithms; otherwise cudnn.benchmark picks the fastest

    def __post_init__(self) -> None:
        require_choice(self.precision, PRECISIONS, "precision")
        require(self.grad_clip >= 0, "grad_clip", f"must be >= 0, got {self.grad_clip}")
        require(0.0 <= self.ema < 1.0, "ema", f"must be in [0, 1), got {self.ema}")
        require(self.warmup_epochs >= 0 and self.warmup_steps >= 0, "warmup_epochs", "warmup must be >= 0")
        require(not (self.warmup_epochs and self.warmup_steps), "warmup_steps",
                "give warmup_epochs or warmup_steps, not both")


# ---------------------------------------------------------------- analysis
@dataclass
class AnalysisConfig:
    """Plots drawn from the model on a fixed sample of test images, logged under plots/."""

    name: str = "default"
    points: int = 2000  # test images sampled for t-SNE and CAM
    tsne: bool = True
    tsne_layers: Optional[List[str]] = None  # module names; None: the penultimate features; "report_d": 4 layers
    tsne_3d: bool = True  # also a 3D PNG (at the end only)
    tsne_html: bool = False  # and the interactive 3D page (4.6 MB: plotly.js embedded, to work offline)
    tsne_at_best: bool = False  # 2D t-SNE at every new best val/acc epoch (report A's sequence)
    cam: bool = True  # CAM (GAP + linear heads) or Grad-CAM grids: per class, correct vs wrong, by depth
    cam_layer: Optional[str] = None  # None: the last conv
    cam_images: int = 8  # per class and per row
    feature_maps: bool = True
    feature_layers: Optional[List[str]] = None  # None: first and last conv

    def __post_init__(self) -> None:
        require(self.points >= 10, "points", "must be >= 10")
        require(self.cam_images >= 1, "cam_images", "must be >= 1")


# ---------------------------------------------------------------- tracking
@dataclass
class TrackingConfig:
    enabled: bool = True
    uri: Optional[str] = None  # None: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db in the working directory
    experiment: str = "imgexp"
    run_name: Optional[str] = None
    parent_run_id: Optional[str] = None  # set by imgexp's sweepers: the sweep's MLflow parent run
    job_name: Optional[str] = None  # set by imgexp's sweepers: the job's swept values, its run's name
    offline_wait_s: float = 600  # a server down at the run's end: wait this long, then keep the rest on disk


@dataclass
class TrialConfig:
    """The Optuna trial a job belongs to; set by ``hydra/sweeper=optuna``, never by hand."""

    storage: Optional[str] = None
    study: Optional[str] = None
    id: Optional[int] = None
    number: Optional[int] = None


# ---------------------------------------------------------------- root
def as_list(value: Any) -> list:
    """A config value that may be one item or several (``optimized_metric``, compare's ``columns``) as a
    list: a scalar as one item, None as none, a list or ListConfig as it is."""
    if value is None:
        return []
    return [value] if isinstance(value, (str, int, float, bool)) else list(value)


REUSE_MODES = ("true", "false", "any")


def reuse_mode(value: Any) -> str:
    """``reuse=`` as one of :data:`REUSE_MODES` (``reuse=false`` arrives as a bool, stored as "False"):
    whether a sweep job takes a FINISHED run with its config instead of training (``any``: also a run of
    another code version)."""
    return str(value).lower()


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
    analysis: Any = MISSING
    trainer: Any = MISSING
    epochs: int = 10
    batch: int = 64
    seed: int = 0
    device: str = "auto"
    topk: int = 2
    optimized_metric: Any = "val/acc_best"  # one metric name, or a list of them (multi-objective sweeps)
    progress: bool = True
    resume: Optional[str] = None  # auto | an output dir | a checkpoint (last.pt) | an MLflow run id
    reuse: str = "true"  # in a sweep: true | false | any (see reuse_mode)
    trial: TrialConfig = field(default_factory=TrialConfig)

    def __post_init__(self) -> None:
        require(self.epochs >= 1, "epochs", f"must be >= 1, got {self.epochs}")
        require(self.batch >= 1, "batch", f"must be >= 1, got {self.batch}")
        require(self.topk >= 1, "topk", f"must be >= 1, got {self.topk}")
        for metric in as_list(self.optimized_metric):
            require(isinstance(metric, str) and metric.split("/")[0] in ("train", "val", "test"), "optimized_metric",
                    f"must be train/, val/ or test/ metrics, got {self.optimized_metric!r}")
        require_choice(reuse_mode(self.reuse), REUSE_MODES, "reuse")
        require(
            self.device in ("auto", "cpu", "mps") or self.device.startswith("cuda"),
            "device",
            f"must be auto, cpu, mps or cuda[:N], got {self.device!r}",
        )


SCHEMAS = {
    "model": {
        "small_cnn": SmallCNNConfig,
        "vgg_style": VGGStyleConfig,
        "lenet": LeNetConfig,
        "mobilenet_v1": MobileNetV1Config,
        "torchvision": TorchvisionConfig,
        "torchvision_dropout": TorchvisionDropoutConfig,
    },
    "data": {"base": DataConfig, "synthetic": SyntheticDataConfig, "imagenet_subset": ImagenetSubsetConfig},
    "augmentation": {"base": AugmentationConfig},
    "normalization": {"base": NormalizationConfig},
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
    "loss": {"cross_entropy": CrossEntropyConfig, "kmeans_center": KMeansCenterConfig},
    "analysis": {"base": AnalysisConfig},
    "tracking": {"base": TrackingConfig},
    "trainer": {"base": TrainerConfig},
}


def register() -> None:
    """Store the root schema as ``config_schema`` and each option's schema under ``schema/<group>/``,
    and register imgexp's sweepers and template search path with Hydra (its plugin scan misses them in
    editable installs)."""
    from hydra.core.plugins import Plugins

    plugins = Plugins.instance()  # scan first: the scan re-executes plugin modules it finds
    from hydra_plugins.imgexp_grid_sweeper.grid_sweeper import GridSweeper
    from hydra_plugins.imgexp_optuna_sweeper.optuna_sweeper import OptunaSweeper
    from hydra_plugins.imgexp_templates.templates_searchpath import TemplatesSearchPath

    for plugin in (GridSweeper, OptunaSweeper, TemplatesSearchPath):
        plugins.register(plugin)
    cs = ConfigStore.instance()
    cs.store(name="config_schema", node=Config)
    for group, options in SCHEMAS.items():
        for name, node in options.items():
            cs.store(group=f"schema/{group}", name=name, node=node)


# Keys that cannot change what a run computes: left out of its config hash.
UNHASHED_KEYS = ("tracking", "progress", "resume", "reuse", "trial", "data.num_workers", "data.cache_dir")


def config_hash(cfg: DictConfig) -> str:
    """A short hash of the resolved config, leaving out :data:`UNHASHED_KEYS`: two runs with the same
    hash train the same thing (``resume=auto`` finds an interrupted run by it)."""
    resolved = OmegaConf.to_container(cfg, resolve=True)
    for key in UNHASHED_KEYS:
        *path, last = key.split(".")
        node = resolved
        for part in path:
            node = node.get(part, {})
        node.pop(last, None)
    return hashlib.sha256(json.dumps(resolved, sort_keys=True, default=str).encode()).hexdigest()[:16]


def unknown_keys(node: DictConfig, schema: type, prefix: str) -> None:
    """Keys a ``+key=value`` override added that ``schema`` does not have (Hydra lets ``+`` add any key)."""
    known = {f.name for f in fields(schema)}
    extra = [k for k in node if k not in known]
    if extra:
        raise ConfigError(f"{prefix}{extra[0]}", f"unknown key; {prefix.rstrip('.') or 'the config'} has "
                                                 f"{', '.join(sorted(known - {'_partial_'}))}")


def validate(cfg: DictConfig) -> None:
    """Run every schema's range checks and reject keys no schema has; raise :class:`ConfigError` naming
    the full key."""
    unknown_keys(cfg, Config, "")
    for key, node in cfg.items():
        if OmegaConf.is_dict(node) and OmegaConf.get_type(node) not in (dict, None):
            unknown_keys(node, OmegaConf.get_type(node), f"{key}.")
            try:
                OmegaConf.to_object(node)
            except ConfigError as err:
                raise ConfigError(f"{key}.{err.key}", err.reason) from None
    OmegaConf.to_object(cfg)  # the root schema checks the top-level keys
