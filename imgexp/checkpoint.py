"""Checkpoint files: written atomically (temp file + rename, so a kill never leaves half a file) and
loaded with ``weights_only=True``."""
from __future__ import annotations

import errno
import os
import shutil
import tempfile
from pathlib import Path

import torch

FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
NEARLY_FULL_BYTES = 16 << 20  # free space under which a failed write is taken for a full disk


class DiskFull(OSError):
    """A checkpoint could not be written for want of space. The previous one is intact, so the run ends
    resumable (KILLED, ``imgexp.status=interrupted``), not FAILED."""

    run_status = "interrupted"


def temp_files(folder: Path, name: str) -> list[Path]:
    """Temp files :func:`save_atomic` left for ``name`` in ``folder`` when its process was killed mid-write."""
    return list(folder.glob(f".{name}.*"))


def full_disk(err: BaseException, free: int) -> bool:
    """Whether a failed write failed for want of space: ENOSPC / EDQUOT, or torch's writer failing (it
    reports "unexpected pos ...", not the errno) on a nearly full file system."""
    if isinstance(err, OSError) and err.errno in FULL_ERRNOS:
        return True
    return isinstance(err, RuntimeError) and free < NEARLY_FULL_BYTES


def save_atomic(state: dict, path: str | os.PathLike) -> None:
    """Write ``state`` to ``path`` through a temp file in the same folder; a full disk raises
    :class:`DiskFull` naming the path, with ``path`` as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
        os.replace(tmp, path)
    except BaseException as err:
        free = shutil.disk_usage(path.parent).free  # before the temp file gives its space back
        os.unlink(tmp)
        if full_disk(err, free):
            raise DiskFull(f"no space left on the device: {path} could not be written ({free >> 20} MiB "
                           "free); the previous checkpoint is intact") from None
        raise


def load(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    return torch.load(path, map_location=map_location, weights_only=True)
