"""The decode-once cache against torchvision's reference pipeline at 224 px (issue 22), on this machine.

Data: --images CIFAR-10 training images upscaled (bicubic) to 256x256 JPEGs (quality 90) in a temp folder,
a benchmark-only stand-in for real photos (the files have the size and format of a photo folder, not
their content). Input pipeline alone (decode, augment, normalize, no model), batch 128:

(a) torchvision: ImageFolder + RandomResizedCrop(224) + RandomHorizontalFlip + ToTensor + Normalize in a
    DataLoader, shuffled, --workers persistent worker processes;
(b) imgexp: ``data=imagefolder data.image_size=224 data.cache_size=256 augmentation=resized_crop_flip``:
    the first pass builds the cache (decoding in --workers processes), later epochs read the mapped cache,
    with the crop, flip and normalization batched in this process (torch's threads: every core);
(c) peak RSS (VmHWM) of a fresh process that builds the data and runs one epoch over the whole cache
    (over 2 GB at 11,000 images), against the same over a tiny cache (data.subset=500); and, for contrast,
    over the whole cache without releasing the mapping's pages (madvise made a no-op);
(d) ``python -m imgexp model=resnet18``, 2 epochs at 224 px on 1,000 training images (data.subset=1000),
    batch 32, with the cache (built on the way, then already built) and streaming from the files
    (``data.cache_max_gb=0``), wall seconds; with ``--device cuda``, instead one epoch of ResNet-50 in
    bf16 + channels_last over all the images fed from the cache, and the training images/s the run logs.

    python benchmarks/decode_cache.py --images 11000                            # CPU: benchmarks/README.md
    python benchmarks/decode_cache.py --images 11000 --workers 8 --device cuda  # in benchmarks/gpu.sh
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torchvision
from PIL import Image
from torch.utils.data import DataLoader
from torchvision import transforms as T

ROOT = Path(__file__).resolve().parents[2] / "shared/datasets/cifar10/train"
DATA = ["data=imagefolder", "data.image_size=224", "data.cache_size=256", "augmentation=resized_crop_flip",
        "normalization=imagenet", "data.val_fraction=0.01", "data.test_fraction=0.01"]


def make_folder(dest: Path, n: int) -> None:
    """``n`` CIFAR-10 training images (the same share of each class) as 256x256 JPEGs under dest/<class>/."""
    classes = sorted(p.name for p in ROOT.iterdir())
    for i in range(n):
        name = classes[i % len(classes)]
        (dest / name).mkdir(parents=True, exist_ok=True)
        with Image.open(ROOT / name / f"{i // len(classes):04d}.jpg") as im:
            im.convert("RGB").resize((256, 256), Image.BICUBIC).save(dest / name / f"{i:05d}.jpg", quality=90)


def imgexp_data(root: Path, cache: Path, workers: int, *extra: str, device: str = "cpu"):
    from hydra import compose, initialize_config_module

    from imgexp.data import build
    from imgexp.register import register

    register()
    with initialize_config_module(config_module="imgexp.conf", version_base=None):
        cfg = compose("config", [*DATA, f"data.root={root}", f"data.cache_dir={cache}",
                                 f"data.num_workers={workers}", "batch=128", *extra])
    return build(cfg.data, cfg.augmentation, cfg.normalization, cfg.batch, cfg.seed, torch.device(device))


def epoch(loader) -> tuple[float, int]:
    start, n = time.perf_counter(), 0
    for x, y in loader:
        n += len(y)
    if x.is_cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - start, n


def rss_child(root: str, cache: str, extra: list[str], keep_pages: bool) -> None:
    """(in a fresh process) build the data over an existing cache, run one epoch, print peak RSS in MB."""
    import imgexp.data.cache
    import imgexp.runtime

    if keep_pages:
        imgexp.data.cache.mmap.MADV_DONTNEED = imgexp.data.cache.mmap.MADV_NORMAL
    imgexp.runtime.keep_freed_memory()
    data = imgexp_data(Path(root), Path(cache), 0, *extra)
    seconds, n = epoch(data.train)
    print(json.dumps({"images": n, "mapped_gb": data.train.x.numel() / 1e9, "seconds": seconds,
                      "peak_rss_mb": peak_rss_mb()}))


def peak_rss_mb() -> float:
    """This process's peak RSS (VmHWM). Not ru_maxrss: a child's starts at its parent's RSS at the fork."""
    status = Path("/proc/self/status").read_text()
    return int(status.split("VmHWM:")[1].split()[0]) / 1024


def peak_rss(root: Path, cache: Path, extra: list[str], keep_pages: bool = False) -> dict:
    out = subprocess.run([sys.executable, __file__, "--rss-child", str(root), str(cache), json.dumps(extra),
                          str(int(keep_pages))], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def cli(root: Path, cwd: Path, *extra: str) -> tuple[float, str]:
    """Wall seconds and stdout of ``python -m imgexp`` at 224 px from ``root``."""
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "imgexp", "data=imagefolder", f"data.root={root}",
                          "data.image_size=224", "data.cache_size=256", "augmentation=resized_crop_flip",
                          "normalization=imagenet", "progress=false", "analysis=none", *extra],
                         cwd=cwd, check=True, capture_output=True, text=True)
    return time.perf_counter() - start, out.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=11_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--device", default="cpu", help="where imgexp's batches go (cpu or cuda)")
    parser.add_argument("--skip-resnet", action="store_true")
    args = parser.parse_args()
    load = os.getloadavg()[0]
    tmp = Path(tempfile.mkdtemp(prefix="imgexp-bench-"))
    root, cache = tmp / "jpegs", tmp / "cache"
    start = time.perf_counter()
    make_folder(root, args.images)
    print(f"made {args.images} 256x256 JPEGs in {time.perf_counter() - start:.0f} s under {root}", flush=True)

    # (a) torchvision's reference pipeline: two epochs, the second timed (workers started in the first)
    classic = DataLoader(
        torchvision.datasets.ImageFolder(str(root), T.Compose([
            T.RandomResizedCrop(224), T.RandomHorizontalFlip(), T.ToTensor(),
            T.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])),
        batch_size=128, shuffle=True, num_workers=args.workers, persistent_workers=True)
    tv = [epoch(classic) for _ in range(2)]
    del classic

    # (b) imgexp: the first pass builds the cache, then epochs from the mapping (with the process setting
    # a run makes: freed memory kept; torchvision's workers above did not have it, nor need it: their
    # tensors are single images, under glibc's 32 MB threshold)
    from imgexp.runtime import keep_freed_memory

    keep_freed_memory()
    start = time.perf_counter()
    data = imgexp_data(root, cache, args.workers, device=args.device)
    build_s = time.perf_counter() - start
    ours = [epoch(data.train) for _ in range(3)]
    first_s = build_s + ours[0][0]
    later_s, later_n = min(ours[1:])

    tv_s, tv_n = tv[1]
    print(f"\n{args.images} images (256x256 JPEG q90), batch 128, {args.workers} workers, imgexp's batches on "
          f"{args.device}; torch {torch.__version__}, "
          f"torchvision {torchvision.__version__}, {os.cpu_count()} CPUs ({platform.machine()}), "
          f"load average {load:.2f} before the run\n")
    print("| path | seconds | images | images/s | vs torchvision's epoch |")
    print("|---|---|---|---|---|")
    print(f"| torchvision: ImageFolder + RandomResizedCrop + flip + ToTensor + Normalize, epoch 2 | {tv_s:.1f} | "
          f"{tv_n} | {tv_n / tv_s:,.0f} | 1.0x |")
    print(f"| imgexp first pass: build the cache ({args.images} files) | {build_s:.1f} | {args.images} | "
          f"{args.images / build_s:,.0f} | {build_s / tv_s * tv_n / args.images:.2f}x the time |")
    print(f"| imgexp first pass: build + epoch 1 | {first_s:.1f} | {ours[0][1]} | {ours[0][1] / first_s:,.0f} | "
          f"{first_s / tv_s * tv_n / ours[0][1]:.2f}x the time |")
    print(f"| imgexp later epoch (best of 2), from the mapped cache | {later_s:.1f} | {later_n} | "
          f"{later_n / later_s:,.0f} | {(later_n / later_s) / (tv_n / tv_s):.1f}x the speed |", flush=True)
    del data

    # (c) peak RSS over the whole cache vs a tiny one (built here first), each in a fresh process
    imgexp_data(root, cache, args.workers, "data.subset=500")
    tiny, big = peak_rss(root, cache, ["data.subset=500"]), peak_rss(root, cache, [])
    kept = peak_rss(root, cache, [], keep_pages=True)
    print("\n| one epoch over | mapped (train split) | peak RSS | more than the tiny cache |")
    print("|---|---|---|---|")
    for name, r in (("the tiny cache (data.subset=500)", tiny), ("the whole cache", big),
                    ("the whole cache, pages not released", kept)):
        print(f"| {name} | {r['mapped_gb']:.2f} GB | {r['peak_rss_mb']:,.0f} MB | "
              f"{r['peak_rss_mb'] - tiny['peak_rss_mb']:,.0f} MB |", flush=True)

    # (d) a whole run at 224 px: ResNet-18 on CPU, with and without the cache; ResNet-50 bf16 on CUDA
    runs = tmp / "runs"
    runs.mkdir()
    if args.skip_resnet:
        return
    if args.device == "cuda":
        seconds, out = cli(root, runs, f"data.cache_dir={cache}", "model=resnet50", "trainer.precision=bf16",
                           "trainer.channels_last=true", "epochs=1", "batch=256", "device=cuda")
        print(f"\nResNet-50, bf16 + channels_last, 1 epoch from the cache: {seconds:.1f} s wall; the run's epoch line:")
        print(next((line for line in out.splitlines() if "images/s" in line), "(no epoch line)"))
        return
    small = ["model=resnet18", "data.subset=1000", "epochs=2", "batch=32", "device=cpu"]
    cached = cli(root, runs, *small, f"data.cache_dir={tmp / 'cache-cli'}")[0]
    warm = cli(root, runs, *small, f"data.cache_dir={tmp / 'cache-cli'}")[0]
    streamed = cli(root, runs, *small, "data.cache_max_gb=0")[0]
    print("\n| ResNet-18, 2 epochs, 224 px, data.subset=1000 (1,000 train + 214 val + 214 test), batch 32 | wall |")
    print("|---|---|")
    print(f"| cache built on the way | {cached:.1f} s |\n| cache already built | {warm:.1f} s |\n"
          f"| streamed from the files (data.cache_max_gb=0) | {streamed:.1f} s |")

if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--rss-child":
        rss_child(sys.argv[2], sys.argv[3], json.loads(sys.argv[4]), bool(int(sys.argv[5])))
    else:
        main()
