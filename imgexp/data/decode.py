"""Decoding image files: per file with PIL (resize, channel conversion), in parallel worker processes.
Unreadable files are skipped and counted."""
from __future__ import annotations

import logging
import multiprocessing
import sys
from collections import Counter
from typing import Optional

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from imgexp.data.sources import Files, Images

log = logging.getLogger(__name__)


def read_image(path: str, size: tuple[int, int], channels: int) -> tuple[Optional[torch.Tensor], bool]:
    """uint8 (C, H, W) at ``size`` (H, W), or None when the file cannot be decoded; and whether the file
    had another size or mode (and was converted: alpha dropped, palette and CMYK to RGB, 16-bit scaled)."""
    target = "L" if channels == 1 else "RGB"
    try:
        with Image.open(path) as im:
            converted = im.size != (size[1], size[0]) or im.mode != target
            im = to_8bit(im).convert(target)
            if im.size != (size[1], size[0]):
                im = im.resize((size[1], size[0]), Image.BILINEAR)
            arr = np.asarray(im)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        return None, False
    t = torch.from_numpy(arr.copy())
    return (t.unsqueeze(0) if t.ndim == 2 else t.permute(2, 0, 1)), converted


def image_channels(mode: str) -> int:
    """1 for the grey modes (``L``, ``LA``, ``I;16``, ``F``, ...), 3 for the colour ones (palette included)."""
    return 1 if Image.getmodebase(mode) == "L" else 3


def to_8bit(im: Image.Image) -> Image.Image:
    """Grey of more than 8 bits as ``L``, scaled to 0..255 (PIL's ``convert("L")`` clips it at 255 instead);
    other images as they are. See :func:`full_scale`."""
    if im.mode not in ("I", "F") and not im.mode.startswith("I;16"):
        return im
    values = np.asarray(im, dtype=np.float64)
    top = 65535.0 if im.mode.startswith("I;16") else full_scale(values, im.mode == "F")
    return Image.fromarray(np.rint(np.clip(values, 0, top) * (255 / top)).astype(np.uint8))


def full_scale(values: np.ndarray, floats: bool) -> float:
    """White for a 32-bit (``I``) or float (``F``) image, which has no fixed range: the smallest of 1.0
    (floats), 255 and 65535 that holds its values, else its own maximum."""
    peak = float(values.max(initial=0))
    return next((top for top in (1.0,) * floats + (255.0, 65535.0) if peak <= top), peak)


PROBES = 200  # files whose headers decide a folder's image size and channels


def majority_geometry(paths: list[str]) -> tuple[tuple[int, int], int]:
    """The most common (H, W) and channel count among up to :data:`PROBES` files spread over ``paths``
    (unreadable ones passed over), so one odd file, wherever it sorts, decides nothing."""
    step = max(1, len(paths) // PROBES)
    seen: Counter = Counter()
    for path in paths[::step][:PROBES]:
        try:
            with Image.open(path) as im:
                seen[((im.height, im.width), image_channels(im.mode))] += 1
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
            continue
    if not seen:
        raise ValueError(f"none of {min(len(paths), PROBES)} image files probed could be read")
    return seen.most_common(1)[0][0]


class FileDataset(Dataset):
    def __init__(self, files: Files, size: tuple[int, int], channels: int) -> None:
        self.files, self.size, self.channels = files, size, channels

    def __len__(self) -> int:
        return len(self.files.paths)

    def __getitem__(self, i: int):
        return *read_image(self.files.paths[i], self.size, self.channels), self.files.y[i]


def collate_readable(batch):
    """Stack the decoded images, dropping unreadable ones: (x uint8, y, number dropped, number converted)."""
    ok = [(x, y) for x, _, y in batch if x is not None]
    converted = sum(c for _, c, _ in batch)
    if not ok:
        return None, None, len(batch), converted
    xs, ys = zip(*ok)
    return torch.stack(xs), torch.stack(ys), len(batch) - len(ok), converted


def file_loader(files: Files, size, channels, batch: int, num_workers: int, batches=None, pin_memory=False):
    """Batches ``(x uint8, y, number unreadable, number converted)`` of ``batch`` files in file order, or
    the index lists of the batch sampler ``batches``; the workers persist between passes."""
    order = {"batch_sampler": batches} if batches is not None else {"batch_size": batch}
    return DataLoader(
        FileDataset(files, size, channels), **order, num_workers=num_workers,
        collate_fn=collate_readable, persistent_workers=num_workers > 0, pin_memory=pin_memory,
        generator=torch.Generator().manual_seed(0),  # workers' base seeds: keep the global generator untouched
        multiprocessing_context=worker_start() if num_workers > 0 else None,
    )


def worker_start() -> multiprocessing.context.BaseContext:
    """How decoding workers start: the platform's own way (fork on Linux, spawn elsewhere), named, because the
    process-wide default may be another's: in a job of joblib's launcher (``hydra/launcher=parallel``) it is
    loky's, whose processes a DataLoader cannot start ("'Process' object has no attribute 'env'")."""
    return multiprocessing.get_context("fork" if sys.platform.startswith("linux") else "spawn")


def decode_files(files: Files, size: tuple[int, int], channels: int, num_workers: int) -> tuple[Images, int, int]:
    """Decode every file, converting those of another size or channel count; returns the readable
    images, how many files could not be read (skipped) and how many were converted."""
    xs, ys, bad, odd = [], [], 0, 0
    for x, y, dropped, converted in file_loader(files, size, channels, 256, num_workers):
        bad += dropped
        odd += converted
        if x is not None:
            xs.append(x)
            ys.append(y)
    if not xs:
        raise ValueError(f"none of the {len(files.paths)} image files could be decoded")
    return Images(torch.cat(xs), torch.cat(ys)), bad, odd
