"""Decoding image files: per file with PIL (resize, channel conversion), in parallel worker processes,
and once per file list into a uint8 tensor cached on disk. Unreadable files are skipped and counted."""
from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from imgexp.data.sources import Files, Images
from imgexp.checkpoint import load, save_atomic

log = logging.getLogger(__name__)
CACHE_VERSION = "1"


def read_image(path: str, size: tuple[int, int], channels: int) -> Optional[torch.Tensor]:
    """uint8 (C, H, W) at ``size`` (H, W), or None when the file cannot be decoded."""
    try:
        with Image.open(path) as im:
            im = im.convert("L" if channels == 1 else "RGB")
            if im.size != (size[1], size[0]):
                im = im.resize((size[1], size[0]), Image.BILINEAR)
            arr = np.asarray(im)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        return None
    t = torch.from_numpy(arr.copy())
    return t.unsqueeze(0) if t.ndim == 2 else t.permute(2, 0, 1)


def probe(path: str) -> tuple[tuple[int, int], int]:
    """(H, W) and channel count (1 for grey-scale modes, else 3) of an image file."""
    with Image.open(path) as im:
        return (im.height, im.width), 1 if im.mode in ("1", "L", "I", "I;16", "F") else 3


class FileDataset(Dataset):
    def __init__(self, files: Files, size: tuple[int, int], channels: int) -> None:
        self.files, self.size, self.channels = files, size, channels

    def __len__(self) -> int:
        return len(self.files.paths)

    def __getitem__(self, i: int):
        return read_image(self.files.paths[i], self.size, self.channels), self.files.y[i]


def collate_readable(batch):
    """Stack the decoded images, dropping unreadable ones: (x uint8, y, number dropped)."""
    ok = [(x, y) for x, y in batch if x is not None]
    if not ok:
        return None, None, len(batch)
    xs, ys = zip(*ok)
    return torch.stack(xs), torch.stack(ys), len(batch) - len(ok)


def file_loader(files: Files, size, channels, batch: int, num_workers: int, sampler=None, pin_memory=False):
    """Batches ``(x uint8, y, number unreadable)`` in file order, or in ``sampler``'s; the workers persist
    between passes."""
    return DataLoader(
        FileDataset(files, size, channels), batch_size=batch, sampler=sampler, num_workers=num_workers,
        collate_fn=collate_readable, persistent_workers=num_workers > 0, pin_memory=pin_memory,
        generator=torch.Generator().manual_seed(0),  # workers' base seeds: keep the global generator untouched
    )


def decode_files(files: Files, size: tuple[int, int], channels: int, num_workers: int) -> tuple[Images, int]:
    """Decode every file; returns the readable images and the number of unreadable files skipped."""
    xs, ys, bad = [], [], 0
    for x, y, dropped in file_loader(files, size, channels, 256, num_workers):
        bad += dropped
        if x is not None:
            xs.append(x)
            ys.append(y)
    if not xs:
        raise ValueError(f"none of the {len(files.paths)} image files could be decoded")
    return Images(torch.cat(xs), torch.cat(ys)), bad


def cache_key(files: Files, size: tuple[int, int], channels: int) -> str:
    """Hash of the file list (paths, sizes, modification times), labels and decode settings."""
    h = hashlib.sha1(f"{CACHE_VERSION}|{size}|{channels}".encode())
    for path, label in zip(files.paths, files.y.tolist()):
        st = os.stat(path)
        h.update(f"{path}|{st.st_size}|{st.st_mtime_ns}|{label}\n".encode())
    return h.hexdigest()


def default_cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "imgexp"


def decode_cached(
    files: Files, size: tuple[int, int], channels: int, num_workers: int, cache_dir: Optional[str]
) -> Images:
    """Decode once, then reuse: the tensors are saved under the cache dir keyed by :func:`cache_key`."""
    path = Path(cache_dir or default_cache_dir()) / f"{cache_key(files, size, channels)}.pt"
    if path.exists():
        saved = load(path)
        return Images(saved["x"], saved["y"])
    images, bad = decode_files(files, size, channels, num_workers)
    if bad:
        log.warning("skipped %d unreadable image files of %d", bad, len(files.paths))
    save_atomic({"x": images.x, "y": images.y}, path)
    log.info("decoded %d images (%dx%dx%d) into the cache %s", len(images.y), channels, *size, path)
    return images
