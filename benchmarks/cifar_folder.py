"""Load time of the whole shared CIFAR-10 image folder (60,000 JPEGs) through imgexp.data.build: the first
build lists, decodes and caches every image; a second build reads the cache.
Then the time of one training-data pass (shuffle, index, crop_flip, normalize) with no model.

    python benchmarks/cifar_folder.py            # run by hand; uses a fresh temporary cache
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_module

from imgexp.register import register
from imgexp.data import build

ROOT = Path(__file__).resolve().parents[2] / "shared/datasets/cifar10"


def timed_build(cache: str):
    with initialize_config_module(config_module="imgexp.conf", version_base=None):
        cfg = compose("config", ["data=cifar10", f"data.root={ROOT}", f"data.cache_dir={cache}",
                                 "augmentation=crop_flip", "batch=128"])
    start = time.perf_counter()
    data = build(cfg.data, cfg.augmentation, cfg.normalization, cfg.batch, cfg.seed, torch.device("cpu"))
    return data, time.perf_counter() - start


def main() -> None:
    register()
    with tempfile.TemporaryDirectory() as cache:
        _, first = timed_build(cache)
        data, second = timed_build(cache)
    start = time.perf_counter()
    n = sum(len(y) for _, y in data.train)
    epoch = time.perf_counter() - start
    print(f"| first build (list + decode + cache) | {first:.1f} s |")
    print(f"| later build (list + read cache) | {second:.1f} s |")
    print(f"| one training pass over {n} images (crop_flip + normalize) | {epoch:.2f} s ({n / epoch:,.0f} images/s) |")


if __name__ == "__main__":
    main()
