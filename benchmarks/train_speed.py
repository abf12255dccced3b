"""Training speed of imgexp's engine against a bare PyTorch loop, same model, data, batch and flip.

Per seed, in one process and one after the other: the bare loop (fp32, data as one in-memory tensor
normalized once, flip with ``torch.where``, Adam, cross-entropy, validate every epoch, test the best-val
weights), then imgexp's trainer built from the config (``imgexp.build.build``: the same data tensors and
model) in each asked variant. An epoch is one training pass plus one validation pass, on both sides;
the median epoch of each run is reported, and ratios against the bare loop.

    python benchmarks/train_speed.py                         # CPU: 4,500 CIFAR-10 images, 3 epochs, 3 seeds
    python benchmarks/train_speed.py --device cuda --images 45000 --epochs 30 --batch 512 --variants fast \
        --set optimizer=sgd optimizer.lr=0.2 optimizer.nesterov=true scheduler=onecycle augmentation=crop_flip

Variants: ``fp32`` (the default trainer), ``bf16_cl`` (bf16 autocast + channels_last), ``fast``
(``trainer=fast``: bf16 + channels_last + torch.compile).
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_module

from imgexp.register import register
from imgexp.models import create_model
from imgexp.build import build

ROOT = Path(__file__).resolve().parents[2] / "shared/datasets/cifar10"
VARIANTS = {"fp32": [], "bf16_cl": ["trainer.precision=bf16", "trainer.channels_last=true"], "fast": ["trainer=fast"]}


def config(args, seed: int, variant: list[str]):
    overrides = ["model=small_cnn", "data=cifar10", f"data.root={args.root}", f"data.subset={args.images}",
                 f"data.cache_dir={args.cache}", "augmentation=flip", f"batch={args.batch}", f"epochs={args.epochs}",
                 f"seed={seed}", f"device={args.device}", "tracking=none", "analysis=none", "progress=false",
                 *args.set, *variant]
    with initialize_config_module(config_module="imgexp.conf", version_base=None):
        return compose("config", overrides)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def imgexp_run(args, seed: int, variant: list[str]) -> tuple[list[float], float]:
    """Per-epoch seconds and test/acc of imgexp's trainer."""
    job = build(config(args, seed, variant), tempfile.mkdtemp())
    trainer, stamps = job.trainer, []
    sync(trainer.device)
    stamps.append(time.perf_counter())

    def on_epoch(epoch, metrics):
        sync(trainer.device)
        stamps.append(time.perf_counter())

    result = trainer.fit(on_epoch)
    return [b - a for a, b in zip(stamps, stamps[1:])], result.test["test/acc"]


def bare_run(args, seed: int) -> tuple[list[float], float]:
    """The same model on the same tensors in a plain loop."""
    cfg = config(args, seed, [])
    data = build(cfg, tempfile.mkdtemp()).data  # the decoded uint8 tensors and the split imgexp uses
    device = torch.device(args.device if args.device != "auto" else "cuda" if torch.cuda.is_available() else "cpu")
    x_train, y_train = data.train.x.float(), data.train.y
    mean, std = x_train.mean((0, 2, 3), keepdim=True), x_train.std((0, 2, 3), keepdim=True)
    prepared = [((s.x.float() - mean) / std, s.y) for s in (data.train, data.val, data.test)]
    (x_train, y_train), val, test = prepared
    torch.manual_seed(seed)
    model = create_model(cfg.model, data.info).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)

    def evaluate(x, y) -> float:
        model.eval()
        with torch.no_grad():
            pred = torch.cat([model(x[i:i + args.batch]).argmax(1) for i in range(0, len(y), args.batch)])
        return (pred == y).float().mean().item()

    times, best, best_state = [], -1.0, None
    for _ in range(args.epochs):
        sync(device)
        start = time.perf_counter()
        model.train()
        order = torch.randperm(len(y_train), device=device)
        for i in range(0, len(y_train), args.batch):
            idx = order[i:i + args.batch]
            xb, yb = x_train[idx], y_train[idx]
            xb = torch.where(torch.rand(len(idx), 1, 1, 1, device=device) < 0.5, xb.flip(3), xb)
            loss = F.cross_entropy(model(xb), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        acc = evaluate(*val)
        sync(device)
        times.append(time.perf_counter() - start)
        if acc > best:
            best, best_state = acc, {k: v.clone() for k, v in model.state_dict().items()}
    model.load_state_dict(best_state)
    return times, evaluate(*test)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default=str(ROOT))
    parser.add_argument("--images", type=int, default=4500, help="training images (data.subset)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--variants", nargs="+", default=["fp32", "bf16_cl"], choices=list(VARIANTS))
    parser.add_argument("--no-bare", action="store_true", help="imgexp's variants only")
    parser.add_argument("--set", nargs="*", default=[], help="more imgexp overrides (both sides' data and model)")
    parser.add_argument("--cache", default=str(Path(tempfile.gettempdir()) / "imgexp-bench-cache"))
    args = parser.parse_args()
    register()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {args.device}; "
          f"{args.images} images, batch {args.batch}, {args.epochs} epochs, seeds {args.seeds}", flush=True)
    rows: dict[str, list[tuple[float, float]]] = {}
    for seed in args.seeds:
        runs = {} if args.no_bare else {"bare": lambda: bare_run(args, seed)}
        runs |= {v: (lambda v=v: imgexp_run(args, seed, VARIANTS[v])) for v in args.variants}
        for name, fn in runs.items():
            times, acc = fn()
            rows.setdefault(name, []).append((statistics.median(times), acc))
            print(f"seed {seed} {name:8s} epochs {' '.join(f'{t:.2f}' for t in times)} s  median "
                  f"{statistics.median(times):.2f} s  total {sum(times):.1f} s  test/acc {acc:.4f}", flush=True)
    base = statistics.mean(t for t, _ in rows["bare"]) if "bare" in rows else None
    print("\n| variant | s / epoch (mean of seed medians) | test/acc (mean) | vs bare: time ratio | vs bare: speed-up |")
    print("|---|---|---|---|---|")
    for name, values in rows.items():
        t, acc = statistics.mean(v[0] for v in values), statistics.mean(v[1] for v in values)
        ratio = f"{t / base:.3f}" if base else "-"
        speedup = f"{base / t:.2f}x" if base else "-"
        print(f"| {name} | {t:.2f} | {acc:.4f} ({', '.join(f'{v[1]:.3f}' for v in values)}) | {ratio} | {speedup} |")


if __name__ == "__main__":
    main()
