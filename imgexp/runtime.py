"""The process's settings for a run: device, seeds, determinism or cudnn autotuning, TF32, freed memory
kept for reuse, and a check that the platform can do what ``cfg.trainer`` asks (fp16, torch.compile)."""
from __future__ import annotations

import ctypes
import os
import random
import shutil
import sys
from typing import Optional

import numpy as np
import torch

from imgexp.config import ConfigError


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("device", f"{name!r} asked for, but torch sees no CUDA device")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def configure_torch(trainer, device: torch.device) -> None:
    """Determinism or speed (cudnn.benchmark), and TF32, as ``cfg.trainer`` says; checks that the
    platform can do what it asks."""
    if trainer.precision == "fp16" and device.type != "cuda":
        raise ConfigError("trainer.precision", f"fp16 needs a CUDA device (gradient scaling), not {device.type}: "
                                               "use bf16")
    reason = compile_unsupported(device) if trainer.compile else None
    if reason:
        raise ConfigError("trainer.compile", f"torch.compile cannot run on {device.type} here: {reason}")
    if trainer.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    if torch.are_deterministic_algorithms_enabled() != trainer.deterministic:  # the call imports inductor: 1 s
        torch.use_deterministic_algorithms(trainer.deterministic)
    torch.backends.cudnn.deterministic = trainer.deterministic
    torch.backends.cudnn.benchmark = not trainer.deterministic
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = trainer.tf32
    keep_freed_memory()


def uses_channels_last(trainer, device: torch.device) -> bool:
    """``trainer.channels_last``, or where it is null, whether NHWC is the faster memory format for conv nets:
    on a CPU (oneDNN's convolutions: 20% faster per step than NCHW for report D's network in fp32, and
    what a loop over images decoded as HWC arrays gets without asking), and on CUDA with bf16 or fp16
    autocast (tensor cores); not on CUDA in fp32, nor on MPS."""
    if trainer.channels_last is not None:
        return trainer.channels_last
    return device.type == "cpu" or (device.type == "cuda" and trainer.precision != "fp32")


M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4  # glibc's mallopt() parameters


def keep_freed_memory() -> None:
    """Have glibc keep freed memory for the next allocation rather than give it back to the OS. By default
    every block over 32 MB is a mapping of its own, so every batch-sized CPU tensor (a batch of 128 at
    224 px is 77 MB in float32) is fresh pages that fault on first touch, which costs 2-4x the op itself
    (PyTorch's CPU tuning guide gets the same from jemalloc or tcmalloc). The peak memory is unchanged;
    memory freed after it is kept. No-op without glibc."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    libc.mallopt(M_MMAP_MAX, 0)
    libc.mallopt(M_TRIM_THRESHOLD, 2**31 - 1)


def compile_unsupported(device: torch.device) -> Optional[str]:
    """Why torch.compile's default backend cannot run for ``device`` here; None when it can."""
    import torch._dynamo
    from torch.utils._triton import has_triton

    if not torch._dynamo.is_dynamo_supported():
        return f"TorchDynamo does not support Python {sys.version.split()[0]} on this platform"
    if device.type == "cuda" and not has_triton():
        return "Triton is not installed (pip install triton)"
    if device.type == "cpu" and not any(shutil.which(c) for c in (os.environ.get("CXX", "g++"), "c++", "clang++")):
        return "no C++ compiler found (install g++, or set CXX)"
    if device.type not in ("cpu", "cuda"):
        return "the default backend (inductor) needs a CPU or a CUDA device"
    return None


class TorchvisionMismatch(RuntimeError):
    """torchvision built for another torch (an easy state to reach mixing PyTorch's CPU index and PyPI)."""


def checked_torchvision():
    """torchvision, after checking that it pairs with this torch (torchvision 0.N goes with torch 2.(N-15));
    a mismatch is one line saying what to install, not ``operator torchvision::nms does not exist`` at the
    first model."""
    torch_version = torch.__version__.split("+")[0]
    try:
        import torchvision as tv
    except (RuntimeError, ImportError) as err:
        raise TorchvisionMismatch(f"torchvision cannot load with torch {torch_version} ({str(err)[:120]}): "
                                  f"{pairing_advice(torch_version)}") from None
    major, minor = (int(p) for p in torch_version.split(".")[:2])
    tv_minor = int(tv.__version__.split("+")[0].split(".")[1])
    if major == 2 and tv_minor != minor + 15:
        raise TorchvisionMismatch(f"torchvision {tv.__version__} is built for torch 2.{tv_minor - 15}, not torch "
                                  f"{torch_version}: {pairing_advice(torch_version)}")
    return tv


def pairing_advice(torch_version: str) -> str:
    major, minor = (int(p) for p in torch_version.split(".")[:2])
    pair = f"torchvision==0.{minor + 15}.*" if major == 2 else "the torchvision of your torch"
    return (f"install the pair with pip install 'torch=={major}.{minor}.*' '{pair}' (from the same index, e.g. "
            "--index-url https://download.pytorch.org/whl/cpu for both)")
