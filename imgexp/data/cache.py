"""The decode-once cache: a split's image files decoded once, at the stored size and channels, into a raw
uint8 (N, C, H, W) file that every later epoch and every later run memory-maps.

A cache is ``<key>.u8`` (the readable images in file order) and ``<key>.json`` (shape, labels, counts),
keyed by :func:`cache_key`; the JSON is written last, so a cache without it was never finished. Jobs that
start together build it once: the first takes ``<key>.lock``, the others wait (and say so) and then map
what it wrote. A damaged cache (cut short, unreadable JSON) is built again. When the cache would pass
``data.cache_max_gb`` (checked by the caller), or its folder is read-only or full, the files stream, as a
log line says.
"""
from __future__ import annotations

import errno
import hashlib
import json
import logging
import mmap
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
from tqdm import tqdm

from imgexp.data.decode import file_loader
from imgexp.data.sources import Files
from imgexp.locks import file_lock

log = logging.getLogger(__name__)
CACHE_VERSION = "2"
RESIZE = "PIL bilinear"  # how read_image resizes: part of the key
PROGRESS_S = 5.0  # seconds between progress lines while building without a terminal
TAKE_ROWS = 128  # rows copied out of a mapping between two releases of its pages (see MappedImages)
UNUSABLE_ERRNOS = (errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOSPC, errno.EDQUOT, errno.ENOTDIR, errno.EEXIST)


def default_cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "imgexp"


def cache_key(files: Files, size: tuple[int, int], channels: int) -> str:
    """Hash of the file list (paths, sizes, modification and status-change times, inodes), labels and decode
    settings. The status-change time (ctime) moves at every write and cannot be set back, so a file rewritten
    with its size and mtime kept (``cp -p``, ``touch -r``) is decoded again; a chmod does too, needlessly."""
    h = hashlib.sha1(f"{CACHE_VERSION}|{size}|{channels}|{RESIZE}".encode())
    for path, label in zip(files.paths, files.y.tolist()):
        st = os.stat(path)
        h.update(f"{path}|{st.st_size}|{st.st_mtime_ns}|{st.st_ctime_ns}|{st.st_ino}|{label}\n".encode())
    return h.hexdigest()


@dataclass
class MappedImages:
    """A cache file's images, mapped read-only: ``x`` is a uint8 (N, C, H, W) tensor over the mapping ``pages``.

    Pages read through a mapping count in the process's resident memory until they are unmapped, and the
    kernel maps whole page-cache folios (up to megabytes) at each fault, so :meth:`take` drops them from
    this process (``madvise(MADV_DONTNEED)``) after every :data:`TAKE_ROWS` rows: they stay in the page
    cache, which serves the next epoch, but a run over a cache larger than memory does not grow by it
    (about 4 ms per batch of 128 images of 256 px).
    """

    pages: mmap.mmap
    x: torch.Tensor

    @classmethod
    def open(cls, path: Path, shape: tuple[int, ...]) -> "MappedImages":
        with open(path, "rb") as f:
            pages = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        with warnings.catch_warnings():  # the tensor is never written to; torch warns of read-only buffers
            warnings.simplefilter("ignore", UserWarning)
            return cls(pages, torch.frombuffer(pages, dtype=torch.uint8).view(shape))

    def block(self, rows: torch.Tensor) -> "MappedImages":
        """The contiguous ``rows`` (ascending, consecutive), still mapped."""
        return MappedImages(self.pages, self.x[int(rows[0]) : int(rows[-1]) + 1] if len(rows) else self.x[:0])

    def take(self, idx: torch.Tensor, out: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Rows ``idx`` copied out (into ``out`` when given), the mapping's pages released as it goes."""
        out = torch.empty((len(idx), *self.x.shape[1:]), dtype=self.x.dtype) if out is None else out
        for start in range(0, len(idx), TAKE_ROWS):
            torch.index_select(self.x, 0, idx[start : start + TAKE_ROWS], out=out[start : start + TAKE_ROWS])
            self.pages.madvise(mmap.MADV_DONTNEED)
        return out


@dataclass
class Cached:
    """A split as its cache holds it: the readable images and their labels, and how many files were
    skipped (unreadable) or converted (another size or mode) when it was built."""

    images: MappedImages
    y: torch.Tensor
    skipped: int = 0
    converted: int = 0

    @property
    def x(self) -> torch.Tensor:
        return self.images.x

    def block(self, rows: torch.Tensor) -> "Cached":
        """Rows ``rows`` (consecutive: an evaluating rank's block), still mapped."""
        return Cached(self.images.block(rows), self.y[rows])


def cache_bytes(files: Files, size: tuple[int, int], channels: int) -> int:
    """The most a cache of ``files`` takes (every file readable)."""
    return len(files.paths) * channels * size[0] * size[1]


def cached_images(files: Files, size: tuple[int, int], channels: int, num_workers: int,
                  cache_dir: Optional[str]) -> Optional[Cached]:
    """``files`` decoded once into the cache and mapped; None (with one line saying why) when the cache
    folder is read-only or full, and the caller streams the files instead."""
    need = cache_bytes(files, size, channels)
    folder = Path(cache_dir or default_cache_dir())
    key = cache_key(files, size, channels)
    path, meta = folder / f"{key}.u8", folder / f"{key}.json"
    found = open_cache(path, meta, warn=True)
    if found is not None:
        return found
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with file_lock(folder / f"{key}.lock", f"waiting for another job to finish decoding into the cache {path}"):
            found = open_cache(path, meta, warn=False)  # another job built it while this one waited
            if found is None:
                build(files, size, channels, num_workers, path, meta, need)
                found = open_cache(path, meta, warn=True)
    except OSError as err:
        if err.errno not in UNUSABLE_ERRNOS:
            raise
        log.warning("decode cache not usable in %s (%s): streaming %d files from disk", folder,
                    os.strerror(err.errno), len(files.paths))
        return None
    return found


def open_cache(path: Path, meta: Path, warn: bool) -> Optional[Cached]:
    """The finished cache at ``path``/``meta``; None when there is none, or (with a warning when
    ``warn``) when it is damaged."""
    if not meta.exists():
        return None
    try:
        saved = json.loads(meta.read_text())
        shape = tuple(saved["shape"])
        expected = shape[0] * shape[1] * shape[2] * shape[3]
        actual = path.stat().st_size
        if actual != expected:
            raise ValueError(f"{actual} bytes, {expected} expected")
        images = MappedImages.open(path, shape) if expected else None
        y = torch.tensor(saved["labels"], dtype=torch.long)
        if len(y) != shape[0]:
            raise ValueError(f"{len(y)} labels for {shape[0]} images")
    except (OSError, ValueError, KeyError, TypeError, IndexError) as err:
        if warn:
            log.warning("decode cache %s is damaged (%s): decoding again", path, err)
        return None
    if images is None:
        raise ValueError(f"none of the {shape[0] + saved['skipped']} image files could be decoded")
    return Cached(images, y, saved["skipped"], saved["converted"])


def build(files: Files, size: tuple[int, int], channels: int, num_workers: int, path: Path, meta: Path,
          need: int) -> None:
    """Decode ``files`` in ``num_workers`` processes into ``path`` (through a temp file, its space reserved
    first, so a full disk fails at once), then write ``meta``. Temp files of a build that was killed
    (this job holds the lock: no other is writing) are removed first."""
    meta.unlink(missing_ok=True)
    for stale in [*path.parent.glob(f".{path.name}.*"), *path.parent.glob(f".{meta.name}.*")]:
        stale.unlink(missing_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    labels, skipped, converted = [], 0, 0
    start = last = time.monotonic()
    bar = tqdm(total=len(files.paths), desc="decoding into the cache", unit="img", leave=False, disable=None)
    try:
        with open(tmp, "wb") as f:
            if need:
                os.posix_fallocate(f.fileno(), 0, need)
            for x, y, dropped, odd in file_loader(files, size, channels, 64, num_workers):
                skipped, converted = skipped + dropped, converted + odd
                if x is not None:
                    f.write(x.numpy().tobytes())
                    labels += y.tolist()
                done = len(labels) + skipped
                bar.update(done - bar.n)
                if bar.disable and time.monotonic() - last >= PROGRESS_S:
                    last = time.monotonic()
                    log.info("decoding into the cache: %d of %d files (%.0f/s)", done, len(files.paths),
                             done / (last - start))
            f.truncate(f.tell())
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    finally:
        bar.close()
    shape = [len(labels), channels, *size]
    meta_tmp = meta.with_name(f".{meta.name}.{os.getpid()}")
    meta_tmp.write_text(json.dumps({"shape": shape, "labels": labels, "skipped": skipped, "converted": converted}))
    os.replace(meta_tmp, meta)
    log.info("decoded %d images (%dx%dx%d) in %.1f s into the cache %s", len(labels), channels, *size,
             time.monotonic() - start, path)
