"""Input-pipeline throughput, same augmentation both ways, on CIFAR-10 JPEGs (run by hand, on CPU).

(a) imgexp: JPEGs decoded once into a uint8 tensor (the "first epoch cost"), then per epoch imgexp's
    TensorLoader (shuffle, index a batch) with build_augment's batched transform and normalization.
(b) torchvision: ImageFolder + per-sample PIL transforms (RandomAffine, RandomHorizontalFlip, ToTensor,
    Normalize) in a DataLoader with worker processes.

Each path runs one untimed warm-up epoch, then --epochs timed ones; the median epoch counts. Path (a)
runs in this process with --threads intra-op threads (default 1: one core, where (b) has --workers).

    python benchmarks/pipeline.py --images 10000 --batch 128 --epochs 3
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from pathlib import Path

import torch
import torchvision
from hydra import compose, initialize_config_module
from torch.utils.data import DataLoader, Subset
from torchvision import transforms as T
from torchvision.io import ImageReadMode, decode_jpeg, read_file

from imgexp.register import register
from imgexp.data.augment import build_augment
from imgexp.data.loader import TensorLoader
from imgexp.data.normalize import channel_stats

ROOT = Path(__file__).resolve().parents[2] / "shared/datasets/cifar10/train"


def epoch_seconds(loader, epochs: int) -> float:
    """Median seconds per full pass over ``epochs`` passes, after one untimed warm-up pass."""
    times = []
    for _ in range(epochs + 1):
        start = time.perf_counter()
        for _ in loader:
            pass
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:])


def torchvision_transform(cfg, mean: torch.Tensor, std: torch.Tensor) -> T.Compose:
    """The per-sample PIL equivalent of ``cfg`` (bilinear like build_augment; PIL can only fill with 0)."""
    steps = []
    if cfg.rotation or cfg.translate or cfg.shear or cfg.zoom:
        steps.append(T.RandomAffine(cfg.rotation, translate=(cfg.translate,) * 2 if cfg.translate else None,
                                    scale=(1 - cfg.zoom, 1 + cfg.zoom), shear=cfg.shear or None,
                                    interpolation=T.InterpolationMode.BILINEAR))
    if cfg.crop_padding:
        steps.append(T.RandomCrop(32, padding=cfg.crop_padding))
    steps += [T.RandomHorizontalFlip()] if cfg.hflip else []
    steps += [T.RandomVerticalFlip()] if cfg.vflip else []
    return T.Compose([*steps, T.ToTensor(), T.Normalize(mean.flatten() / 255, std.flatten() / 255)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", type=Path, default=ROOT, help="an ImageFolder of 32x32 JPEGs")
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=3, help="timed epochs per path, after one warm-up")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads for the imgexp path")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers, torchvision path")
    parser.add_argument("--augmentation", default="keras_like", help="a preset in conf/augmentation/")
    args = parser.parse_args()

    load = os.getloadavg()[0]  # from other processes: this is a shared machine
    torch.set_num_threads(args.threads)
    register()
    with initialize_config_module(config_module="imgexp.conf", version_base=None):
        cfg = compose(config_name="config", overrides=[f"augmentation={args.augmentation}"]).augmentation
    folder = torchvision.datasets.ImageFolder(str(args.root))
    pick = torch.randperm(len(folder), generator=torch.Generator().manual_seed(0))[: args.images].tolist()

    # (a) imgexp: decode once, then batched augmentation + normalization per epoch.
    start = time.perf_counter()
    x = torch.stack([decode_jpeg(read_file(folder.samples[i][0]), mode=ImageReadMode.RGB) for i in pick])
    decode_s = time.perf_counter() - start
    y = torch.tensor([folder.targets[i] for i in pick])
    mean, std = channel_stats("standardize", x)
    augment = build_augment(cfg, 0, torch.device("cpu"))
    loader = TensorLoader(x, y, args.batch, lambda xb: (augment(xb.float()) - mean) / std, shuffle=True)
    ours_s = epoch_seconds(loader, args.epochs)

    # (b) torchvision: per-sample PIL decode + transforms in worker processes.
    folder.transform = torchvision_transform(cfg, mean, std)
    classic = DataLoader(Subset(folder, pick), args.batch, shuffle=True, num_workers=args.workers,
                         persistent_workers=args.workers > 0)
    classic_s = epoch_seconds(classic, args.epochs)

    n = len(pick)
    print(f"{n} images, batch {args.batch}, augmentation={args.augmentation}; median of {args.epochs} epochs "
          f"after 1 warm-up; torch {torch.__version__}, {os.cpu_count()} CPUs ({platform.machine()}), "
          f"imgexp path on {args.threads} thread(s); load average {load:.2f} before the run\n")
    print("| path | first epoch cost | s / epoch | images/s | vs torchvision |")
    print("|---|---|---|---|---|")
    print(f"| imgexp: decode once, batched augment, {args.threads} thread(s) | {decode_s:.2f} s decode "
          f"| {ours_s:.3f} | {n / ours_s:,.0f} | {classic_s / ours_s:.1f}x |")
    print(f"| torchvision: ImageFolder + PIL, {args.workers} workers | none | {classic_s:.3f} "
          f"| {n / classic_s:,.0f} | 1.0x |")


if __name__ == "__main__":
    main()
