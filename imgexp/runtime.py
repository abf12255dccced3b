"""The process's torch settings for a run: device, seeds, determinism or cudnn autotuning, TF32, and a
check that the platform can do what ``cfg.trainer`` asks (fp16, torch.compile)."""
from __future__ import annotations

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
