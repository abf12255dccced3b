"""Config schemas of the data, augmentation and normalization groups (conf/data/, conf/augmentation/,
conf/normalization/)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional

from omegaconf import MISSING

from imgexp.config import require, require_choice
from imgexp.data.normalize import NORMALIZATIONS


@dataclass
class DataConfig:
    name: str = MISSING
    root: Optional[str] = None  # where the files are (or go, with download=true)
    download: bool = False  # torchvision data sets only
    val_fraction: float = 0.15  # of the whole set, or of train when the source has its own test split
    test_fraction: float = 0.15  # used only when the source has no test split of its own; 0: test on val
    split_seed: int = 0
    subset: Optional[int] = None  # N training images (stratified sample); val/test shrink in proportion
    image_size: Optional[int] = None  # resize to image_size x image_size; None keeps the source's size
    channels: Optional[int] = None  # 1 or 3: convert (RGB <-> luminance); None keeps the source's
    num_workers: int = 2  # decoding processes
    in_memory_max_px: int = 64  # images up to this size are held in (device) memory; larger ones are mapped
    cache_dir: Optional[str] = None  # decode-once cache; None: $XDG_CACHE_HOME/imgexp or ~/.cache/imgexp
    cache_max_gb: float = 20.0  # a split whose decoded images would take more streams from its files
    cache_size: Optional[int] = None  # store images this large (>= image_size): training crops image_size
    # out of them (augmentation=resized_crop_flip: random, else the centre), evaluation the centre

    def __post_init__(self) -> None:
        require(0.0 < self.val_fraction < 1.0, "val_fraction", "must be in (0, 1)")
        require(0.0 <= self.test_fraction < 1.0, "test_fraction", "must be in [0, 1) (0: test on the val split "
                                                                  "when the data has no test split of its own)")
        require(self.val_fraction + self.test_fraction < 1.0, "val_fraction", "val + test fractions must be < 1")
        require(self.subset is None or self.subset > 0, "subset", "must be a positive number of images")
        require(self.image_size is None or self.image_size > 0, "image_size", "must be > 0")
        require(self.channels in (None, 1, 3), "channels", f"must be 1 or 3, got {self.channels}")
        require(self.num_workers >= 0, "num_workers", "must be >= 0")
        require(self.cache_max_gb >= 0, "cache_max_gb", "must be >= 0")
        require(self.cache_size is None or (self.image_size is not None and self.cache_size >= self.image_size),
                "cache_size", f"must be >= data.image_size ({self.image_size}), which must be set")


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
    crop_scale: Optional[List[float]] = None  # random resized crop: area fraction range, e.g. [0.08, 1.0]
    crop_ratio: List[float] = field(default_factory=lambda: [3 / 4, 4 / 3])  # its aspect ratio range
    fill: str = "constant"  # outside the image: constant (0), nearest (edge pixel, Keras' default), reflect

    def __post_init__(self) -> None:
        for key in ("rotation", "translate", "shear", "zoom"):
            require(getattr(self, key) >= 0, key, "must be >= 0")
        require(self.zoom < 1.0, "zoom", "must be < 1")
        require(self.crop_padding >= 0, "crop_padding", "must be >= 0")
        scale = self.crop_scale
        require(scale is None or (len(scale) == 2 and 0 < scale[0] <= scale[1] <= 1), "crop_scale",
                f"must be [low, high] with 0 < low <= high <= 1, got {scale}")
        require(len(self.crop_ratio) == 2 and 0 < self.crop_ratio[0] <= self.crop_ratio[1], "crop_ratio",
                f"must be [low, high] with 0 < low <= high, got {self.crop_ratio}")
        require_choice(self.fill, ("constant", "nearest", "reflect"), "fill")


@dataclass
class NormalizationConfig:
    name: str = MISSING

    def __post_init__(self) -> None:
        require_choice(self.name, NORMALIZATIONS, "name")


SCHEMAS = {
    "data": {"base": DataConfig, "synthetic": SyntheticDataConfig, "imagenet_subset": ImagenetSubsetConfig},
    "augmentation": {"base": AugmentationConfig},
    "normalization": {"base": NormalizationConfig},
}
