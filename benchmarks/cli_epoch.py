"""The command line's epoch against the bare PyTorch loop in ``../shared/peers/bare_cifar.py`` (issue 25).

Each round runs, one after the other and in alternating order, the peer (report D's CNN, ``--images``
CIFAR-10 training images in memory, batch 128, flip, Adam, fp32) and imgexp exactly as a user does::

    python -m imgexp model=small_cnn data=cifar10 data.root=ROOT data.subset=N augmentation=flip batch=128 \
        analysis=none progress=false epochs=E

(``data.subset`` = ``--images``: the same training images, and a validation split of 10% more), both with
``OMP_NUM_THREADS`` = ``--threads``. Per round it reports the peer's training images/s, imgexp's logged
``time/images_per_s`` (training pass) and its whole epoch: the time between two consecutive epoch lines
of its log, which holds one epoch's training and validation and the previous epoch's checkpoint and
logging. Throughput is over every epoch on both sides (the peer prints no other); the whole epoch is one
of epochs 2 and later, against the peer's mean training epoch (its first, warm-up, included).

    python benchmarks/cli_epoch.py                   # 3 rounds, 3 epochs each, tracking to MLflow
    python benchmarks/cli_epoch.py --set tracking=none
    python benchmarks/cli_epoch.py --parts           # where a training step's time goes (in-process)
"""
from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from mlflow import MlflowClient

SHARED = Path(__file__).resolve().parents[2] / "shared"
EPOCH_LINE = re.compile(r"epoch (\d+)/\d+: .* \| ([\d.]+) s, (\d+) images/s")
PEER_LINE = re.compile(r"train_s ([\d.]+) img_per_s (\d+)")


def peer(args, env: dict[str, str]) -> dict[str, float]:
    """The bare loop over ``epochs``: its training seconds per epoch and images/s (over every epoch)."""
    out = subprocess.run([sys.executable, str(SHARED / "peers" / "bare_cifar.py"), args.root, str(args.images),
                          str(args.epochs), str(args.batch)], env=env, capture_output=True, text=True, check=True)
    train_s, per_s = PEER_LINE.search(out.stdout).groups()
    return {"train_epoch_s": float(train_s) / args.epochs, "images_per_s": float(per_s)}


def imgexp(args, env: dict[str, str]) -> dict[str, float]:
    """``python -m imgexp``: logged training images/s (mean over the epochs), the logged
    train+val ``time/epoch_s``, and the whole epoch between consecutive epoch lines."""
    with tempfile.TemporaryDirectory() as cwd:
        cmd = [sys.executable, "-m", "imgexp", "model=small_cnn", "data=cifar10", f"data.root={args.root}",
               f"data.subset={args.images}", "augmentation=flip", f"batch={args.batch}",
               "analysis=none", "progress=false", f"epochs={args.epochs}", f"data.cache_dir={args.cache}",
               *args.set]
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        lines, seen = [], []
        for line in proc.stdout:
            lines.append(line)
            if EPOCH_LINE.search(line):
                seen.append(time.perf_counter())
        if proc.wait() != 0:
            raise SystemExit("".join(lines[-20:]))
        logged = [tuple(map(float, m.groups()[1:])) for m in map(EPOCH_LINE.search, lines) if m]
        split = next((m.group(1) for m in (re.search(r"data \w+: (.* test) images", l) for l in lines) if m), "")
        if (Path(cwd) / "mlflow.db").exists():  # the logged metrics agree with the lines
            client = MlflowClient(f"sqlite:///{Path(cwd) / 'mlflow.db'}")
            run = client.search_runs([client.get_experiment_by_name("imgexp").experiment_id])[0]
            assert abs(run.data.metrics["time/images_per_s"] - logged[-1][1]) < 1, run.data.metrics
    later = slice(1, None) if args.epochs > 1 else slice(None)
    whole = [b - a for a, b in zip(seen, seen[1:])] or [logged[0][0]]
    return {"images_per_s": statistics.mean(v for _, v in logged),
            "epoch_s": statistics.mean(t for t, _ in logged[later]), "whole_epoch_s": statistics.mean(whole),
            "split": split}


def parts(args) -> None:
    """Milliseconds per training step in each part of imgexp's step, in-process on the job ``python -m imgexp``
    builds (``imgexp.build.build``), median of 20 steps after 3 of warm-up."""
    import torch
    from hydra import compose, initialize_config_module

    from imgexp.register import register
    from imgexp.build import build

    register()
    with initialize_config_module(config_module="imgexp.conf", version_base=None):
        cfg = compose("config", ["model=small_cnn", "data=cifar10", f"data.root={args.root}",
                                 f"data.subset={args.images}", "augmentation=flip", f"batch={args.batch}",
                                 "tracking=none", "analysis=none", "progress=false", f"data.cache_dir={args.cache}",
                                 *args.set])
    trainer = build(cfg, tempfile.mkdtemp()).trainer
    loader, model, times = trainer.train, trainer.model, {}
    model.train()
    for i in range(23):
        stamps = [time.perf_counter()]
        idx = torch.randperm(len(loader.y))[:args.batch]
        x, y = loader.take(idx)
        stamps.append(time.perf_counter())
        x = loader.transform(x)
        stamps.append(time.perf_counter())
        x = x.contiguous(memory_format=trainer.memory_format)
        stamps.append(time.perf_counter())
        with trainer._autocast():
            logits = trainer.forward(x)
            loss = trainer.loss_fn(logits, y)
        stamps.append(time.perf_counter())
        trainer.optimizer.zero_grad(set_to_none=True)
        trainer.scaler.scale(loss).backward()
        stamps.append(time.perf_counter())
        trainer.scaler.step(trainer.optimizer)
        trainer.scaler.update()
        trainer.schedule.after_step()
        stamps.append(time.perf_counter())
        torch.stack([loss.detach().float() * len(y), (logits.argmax(1) == y).sum().float()])
        stamps.append(time.perf_counter())
        names = ("take rows", "uint8 to float, normalize, flip", "memory format", "forward + loss", "backward",
                 "optimizer + scaler + schedule", "loss and accuracy sums")
        for name, a, b in zip(names, stamps, stamps[1:]):
            if i >= 3:
                times.setdefault(name, []).append((b - a) * 1000)
    total = sum(statistics.median(v) for v in times.values())
    for name, values in times.items():
        print(f"{name:34s} {statistics.median(values):8.2f} ms  {statistics.median(values) / total:6.1%}")
    print(f"{'step':34s} {total:8.2f} ms ({trainer.memory_format})")


def spread(values: list[float], fmt: str = "{:.3f}") -> str:
    return f"{fmt.format(statistics.median(values))} ({fmt.format(min(values))}-{fmt.format(max(values))})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default=str(SHARED / "datasets" / "cifar10"))
    parser.add_argument("--images", type=int, default=4500, help="training images on both sides")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", default="2", help="OMP_NUM_THREADS of both")
    parser.add_argument("--set", nargs="*", default=[], help="more imgexp overrides")
    parser.add_argument("--cache", default=str(Path(tempfile.gettempdir()) / "imgexp-bench-cache"))
    parser.add_argument("--parts", action="store_true", help="time the parts of a training step, in-process")
    args = parser.parse_args()
    if args.parts:
        return parts(args)
    env = {**os.environ, "OMP_NUM_THREADS": args.threads, "MPLBACKEND": "Agg"}
    env.pop("MLFLOW_TRACKING_URI", None)
    imgexp(argparse.Namespace(**{**vars(args), "epochs": 1}), env)  # the decode cache, outside the rounds
    throughput, whole = [], []
    for r in range(args.rounds):
        order = (peer, imgexp) if r % 2 == 0 else (imgexp, peer)
        got = {fn.__name__: fn(args, env) for fn in order}
        bare, ours = got["peer"], got["imgexp"]
        throughput.append(ours["images_per_s"] / bare["images_per_s"])
        whole.append(ours["whole_epoch_s"] / bare["train_epoch_s"])
        print(f"round {r + 1}: bare {bare['train_epoch_s']:.2f} s/epoch, {bare['images_per_s']:.0f} images/s | "
              f"imgexp {ours['images_per_s']:.0f} images/s, train+val {ours['epoch_s']:.2f} s, whole epoch "
              f"{ours['whole_epoch_s']:.2f} s ({ours['split']}) | throughput {throughput[-1]:.3f}x, whole epoch "
              f"{whole[-1]:.3f}x the bare training epoch", flush=True)
    print(f"\nthroughput vs bare (target >= 0.95): median {spread(throughput)}; whole epoch vs bare training "
          f"epoch (target <= 1.15): median {spread(whole)}; {args.rounds} rounds of {args.epochs} epochs")


if __name__ == "__main__":
    main()
