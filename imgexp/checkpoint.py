"""Checkpoint files: written atomically (temp file + rename, so a kill never leaves half a file) and
loaded with ``weights_only=True``. Data (the decode cache) and training both use these."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch


def save_atomic(state: dict, path: str | os.PathLike) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def load(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    return torch.load(path, map_location=map_location, weights_only=True)
