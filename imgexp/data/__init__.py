"""Data: a source lists or loads images, the splits are stratified, image files are decoded once into the
decode cache (small images are then held in (device) memory, larger ones memory-mapped; files the cache
cannot hold stream through DataLoader workers); batches are augmented and normalized on the training device."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Optional, Union

import numpy as np
import torch
import torch.nn.functional as F

from imgexp.config import ConfigError
from imgexp.data import digits, folders, synthetic, torchvision_sets  # noqa: F401  (register the sources)
from imgexp.data.augment import build_augment, center_crop
from imgexp.data.cache import Cached, cache_bytes, cached_images
from imgexp.data.decode import decode_files, majority_geometry
from imgexp.data.loader import Shard, StreamLoader, TensorLoader
from imgexp.data.normalize import channel_stats
from imgexp.data.records import SplitRecord, split_records
from imgexp.data.sources import SOURCES, Files, Images, Samples, Source, load_source, register_source
from imgexp.data.split import stratified_split, stratified_subset

__all__ = ["Data", "DataInfo", "Files", "Images", "SOURCES", "Shard", "Source", "StreamLoader", "TensorLoader", "build",
           "register_source"]
log = logging.getLogger(__name__)
STATS_SAMPLE = 2000  # images that estimate mean/std of a mapped or streamed train split
Loader = Union[TensorLoader, StreamLoader]


@dataclass
class DataInfo:
    channels: int
    height: int
    width: int
    num_classes: int
    class_names: list[str]


@dataclass
class Preprocessing:
    """What turns an image into the model's input: stored at ``stored`` (H, W), centre-cropped to the model's
    size, ``(x - mean) / std`` per channel (0..255 units)."""

    stored: tuple[int, int]
    mean: list[float]
    std: list[float]


@dataclass
class Data:
    info: DataInfo
    train: Loader
    val: Loader
    test: Loader
    preprocessing: Optional[Preprocessing] = None
    records: list[SplitRecord] = field(default_factory=list)


def labels(samples: Samples) -> np.ndarray:
    return samples.y.numpy()


def split(source: Source, cfg) -> tuple[Samples, Samples, Samples]:
    """train/val/test: the source's own splits, the missing ones carved out of train (stratified); with
    ``test_fraction=0`` and no test split of its own, test is the val split (one line says so)."""
    train, val, test = source.train, source.val, source.test
    if test is None and val is None and cfg.test_fraction:
        tr, va, te = stratified_split(labels(train), cfg.val_fraction, cfg.test_fraction, cfg.split_seed)
        return train.take(tr), train.take(va), train.take(te)
    if val is None:
        tr, va, _ = stratified_split(labels(train), cfg.val_fraction, None, cfg.split_seed)
        train, val = train.take(tr), train.take(va)
    if test is None and not cfg.test_fraction:
        log.warning("no test split of its own and data.test_fraction=0: the test/ metrics are the val split's "
                    "(%d images), the split that also picks the best epoch", len(val.y))
        test = val
    elif test is None:
        tr, te, _ = stratified_split(labels(train), cfg.test_fraction, None, cfg.split_seed)
        train, test = train.take(tr), train.take(te)
        if source.val is not None:  # a folder of train/ and val/ (torchvision's layout)
            log.info("no test split of its own: %d training images (data.test_fraction=%g) are the test split; "
                     "data.test_fraction=0 tests on the val split instead", len(test.y), cfg.test_fraction)
    return train, val, test


def subset(parts: tuple[Samples, Samples, Samples], n: int, seed: int) -> tuple[Samples, Samples, Samples]:
    """A stratified sample of ``n`` training images; val and test shrink by the same ratio."""
    train = parts[0]
    ratio = min(1.0, n / len(train.y))
    classes = len(np.unique(labels(train)))
    return tuple(p.take(stratified_subset(labels(p), max(classes, round(len(p.y) * ratio)), seed)) for p in parts)


def geometry(train: Samples, cfg) -> tuple[tuple[int, int], int]:
    """Target (H, W) and channels: the config's, else the source's (for files, the majority's)."""
    if cfg.image_size and cfg.channels:
        return (cfg.image_size, cfg.image_size), cfg.channels
    size, channels = ((train.x.shape[2:], train.x.shape[1]) if isinstance(train, Images)
                      else majority_geometry(train.paths))
    size = (cfg.image_size, cfg.image_size) if cfg.image_size else tuple(size)
    return size, cfg.channels or int(channels)


def drop_empty_classes(parts: tuple, names: list[str]) -> tuple[tuple, list[str]]:
    """Leave out, with one warning naming them, the classes with no readable training image (their files
    all failed to decode): they would be classes the model can never learn. (The kept images of a mapped
    split are then held in memory.)"""
    present = torch.bincount(parts[0].y, minlength=len(names)) > 0
    if present.all():
        return parts, names
    log.warning("left out classes with no readable training image: %s",
                ", ".join(n for n, ok in zip(names, present.tolist()) if not ok))
    relabel = torch.cumsum(present.long(), 0) - 1
    kept = tuple(Images(p.x[present[p.y]], relabel[p.y[present[p.y]]]) for p in parts)
    return kept, [n for n, ok in zip(names, present.tolist()) if ok]


def require_two_classes(train: Samples, names: list[str], cfg) -> None:
    """One clear error, before any training, for data with a single class (a classifier would learn
    nothing, and report accuracy 1.0)."""
    present = [names[k] for k in torch.unique(train.y).tolist()]
    if len(present) < 2:
        raise ConfigError("data", f"a classifier needs at least two classes, {cfg.root or f'data={cfg.name}'} "
                          f"has one: {', '.join(present)}")


def log_test_coverage(test: Samples, names: list[str]) -> None:
    """Say which classes test/f1_macro averages over when some have no test images (their F1 is undefined,
    not 0: see :func:`imgexp.train.metrics.classification_metrics`)."""
    counts = torch.bincount(test.y, minlength=len(names)).tolist()
    absent = [name for name, n in zip(names, counts) if n == 0]
    if absent:
        log.info("test/f1_macro covers %d of %d classes (no test images: %s)", len(names) - len(absent),
                 len(names), ", ".join(absent))


def to_channels(x: torch.Tensor, channels: int) -> torch.Tensor:
    """(N, C, H, W) images in ``channels``: grey repeated to RGB, RGB to grey by luma (as float)."""
    if x.shape[1] == channels:
        return x
    if channels == 3:
        return x.expand(-1, 3, -1, -1)
    return (x.float() * torch.tensor([0.299, 0.587, 0.114], device=x.device).view(1, 3, 1, 1)).sum(1, keepdim=True)


def convert(images: Images, size: tuple[int, int], channels: int) -> Images:
    """Resize (bilinear, antialiased) and convert channels of in-memory images, once."""
    x = to_channels(images.x, channels)
    if x.is_floating_point():
        x = x.round().byte()
    if tuple(x.shape[2:]) != size:
        x = F.interpolate(x.float(), size=size, mode="bilinear", antialias=True, align_corners=False)
        x = x.round().clamp(0, 255).byte()
    return Images(x.contiguous(), images.y)


def fits_cache(parts: tuple[Samples, ...], size: tuple[int, int], channels: int, cfg) -> bool:
    """Whether the splits' files, decoded, stay within ``data.cache_max_gb`` (else one line: they stream)."""
    files = [p for p in parts if isinstance(p, Files)]
    need = sum(cache_bytes(p, size, channels) for p in files)
    if need <= cfg.cache_max_gb * 1e9:
        return True
    log.info("decoded images would take %.3g GB, over data.cache_max_gb=%g: streaming %d files from disk",
             need / 1e9, cfg.cache_max_gb, sum(len(p.y) for p in files))
    return False


def decoded(samples: Samples, size: tuple[int, int], channels: int, cfg, cache: bool) -> tuple[Samples, int, int]:
    """A split decoded at ``size`` and ``channels``: in-memory images converted; files through the decode
    cache (when ``cache``), held in memory when no larger than ``cfg.in_memory_max_px``, else mapped
    (:class:`Cached`), or left as files to stream. Also how many files were skipped (unreadable) and
    converted (another size or mode)."""
    if isinstance(samples, Images):
        return convert(samples, size, channels), 0, 0
    cached = cached_images(samples, size, channels, cfg.num_workers, cfg.cache_dir) if cache else None
    if cached is None:
        return samples, 0, 0
    if max(size) <= cfg.in_memory_max_px:
        return Images(cached.x.clone(), cached.y), cached.skipped, cached.converted
    return cached, cached.skipped, cached.converted


def build(data_cfg, aug_cfg, norm_cfg, batch: int, seed: int, device: torch.device, shard: Shard = Shard()) -> Data:
    """Load ``data_cfg``'s source, split and subset it, and return loaders that yield augmented (train)
    and normalized batches on ``device``: rank ``shard.rank``'s part of each training batch of ``batch``
    images, and its block of the val and test splits. Images are stored at ``data.cache_size`` where it is
    set, and cropped to ``data.image_size`` in every batch."""
    source = load_source(data_cfg)
    parts = split(source, data_cfg)
    if data_cfg.subset is not None:
        parts = subset(parts, data_cfg.subset, data_cfg.split_seed)
    records = split_records(parts, data_cfg, source.class_names)
    size, channels = geometry(parts[0], data_cfg)
    stored = (data_cfg.cache_size,) * 2 if data_cfg.cache_size else size
    files = sum(len(p.y) for p in parts if isinstance(p, Files))
    cache = fits_cache(parts, stored, channels, data_cfg)
    parts, bad, odd = zip(*(decoded(p, stored, channels, data_cfg, cache) for p in parts))
    if sum(bad):
        log.warning("skipped %d unreadable image files of %d", sum(bad), files)
    if sum(odd):
        log.info("converted %d of %d images to %dx%dx%d (their size or mode differed)", sum(odd), files,
                 channels, *stored)
    class_names = list(source.class_names)
    if not any(isinstance(p, Files) for p in parts):
        parts, class_names = drop_empty_classes(parts, class_names)
    require_two_classes(parts[0], class_names, data_cfg)
    log_test_coverage(parts[2], class_names)
    train = parts[0]
    if isinstance(train, Images):
        stats_x = train.x
    elif norm_cfg.name != "standardize":  # fixed statistics: no image needed
        stats_x = torch.empty(0, channels, 1, 1, dtype=torch.uint8)
    else:
        sample = stratified_subset(labels(train), min(STATS_SAMPLE, len(train.y)), seed)
        stats_x = (train.images.take(torch.as_tensor(sample)) if isinstance(train, Cached)
                   else decode_files(train.take(sample), stored, channels, data_cfg.num_workers)[0].x)
    mean, std = (t.to(device) for t in channel_stats(norm_cfg.name, stats_x))
    augment = build_augment(aug_cfg, seed + 7919 * shard.rank, device, size)  # each rank its own augmentations

    def normalize(x: torch.Tensor) -> torch.Tensor:
        return center_crop(x, size).to(torch.float32, copy=True).sub_(mean).div_(std)

    def augment_normalize(x: torch.Tensor) -> torch.Tensor:
        return augment(x).sub_(mean).div_(std)

    def loader(samples: Samples, is_train: bool) -> Loader:
        augmented = is_train and augment is not None
        transform, rngs = (augment_normalize, [augment.generator]) if augmented else (normalize, [])
        size_ = batch
        if not is_train and shard.world > 1:  # this rank's block, in batches as large as its training ones
            rows, size_ = shard.rows(len(samples.y)), -(-batch // shard.world)
            samples = samples.block(rows) if isinstance(samples, Cached) else samples.take(rows.numpy())
        if isinstance(samples, Files):
            return StreamLoader(samples, stored, channels, size_, transform, device, data_cfg.num_workers,
                                shuffle=is_train, seed=seed, rngs=rngs, shard=shard)
        mapped = isinstance(samples, Cached)
        x, y = (samples.images, samples.y) if mapped else (samples.x.to(device), samples.y.to(device))
        return TensorLoader(x, y, size_, transform, shuffle=is_train, seed=seed, rngs=rngs, shard=shard, device=device)

    where = ("streamed from files" if isinstance(train, Files) else "memory-mapped from the decode cache"
             if isinstance(train, Cached) else "in memory")
    log.info("data %s: %d train / %d val / %d test images, %dx%dx%d%s, %s", data_cfg.name, *(len(p.y) for p in parts),
             channels, *size, f" (stored {stored[0]}x{stored[1]})" if stored != size else "", where)
    dropped = len(train.y) % batch
    if shard.world > 1 and shard.rank == 0:
        each = f"{batch // shard.world}" + (f"-{-(-batch // shard.world)}" if batch % shard.world else "")
        log.info("%d ranks: each takes %s images of every batch of %d%s", shard.world, each, batch,
                 f"; the last {dropped} training images of each shuffled epoch are left out (fewer than the ranks)"
                 if 0 < dropped < shard.world else "")
    info = DataInfo(channels, size[0], size[1], len(class_names), class_names)
    preprocessing = Preprocessing(stored, mean.flatten().tolist(), std.flatten().tolist())
    return Data(info, loader(parts[0], True), loader(parts[1], False), loader(parts[2], False), preprocessing,
                records)
