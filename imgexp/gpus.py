"""GPU slot claims: the jobs on one machine (parallel sweeps, compose workers) spread over its GPUs. Each
GPU has ``jobs_per_gpu`` slots; a job holds one slot per GPU it uses from its start to its end. A slot is
an ``fcntl.flock`` lock on a file, so the OS frees it when its process ends, however it ends (kill -9
included)."""
from __future__ import annotations

import fcntl
import logging
import os
import re
import tempfile
import time
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Iterator, Optional

from imgexp.config import ConfigError

IDS_ENV = "IMGEXP_GPU_IDS"  # the GPUs to choose from, CUDA indices "0,1"; unset or empty: every visible GPU
LOCKS_ENV = "IMGEXP_GPU_LOCKS"  # the folder of the lock files; default <tempdir>/imgexp-gpu-slots

log = logging.getLogger(__name__)
Claim = dict[int, tuple[int, int]]  # {CUDA index: (slot, the fd holding its lock)}


def gpu_ids() -> list[int]:
    """The CUDA indices (within CUDA_VISIBLE_DEVICES) jobs may claim: IMGEXP_GPU_IDS when set, else every
    visible GPU; [] inside a SLURM job without IMGEXP_GPU_IDS (SLURM gives each job its GPUs)."""
    ids = os.environ.get(IDS_ENV, "").strip()
    if ids:
        try:
            return sorted({int(i) for i in ids.split(",") if i.strip()})
        except ValueError:
            raise ValueError(f"{IDS_ENV}={ids!r}: expected CUDA indices, e.g. 0,1") from None
    if os.environ.get("SLURM_JOB_ID"):
        return []
    import torch

    return list(range(torch.cuda.device_count()))


def physical_id(index: int) -> str:
    """The name of GPU ``index`` across processes: its entry of CUDA_VISIBLE_DEVICES (a number or a UUID)
    when that is set, else the index. Lock files are named by it, so jobs with different
    CUDA_VISIBLE_DEVICES never claim one physical GPU twice."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if not visible:
        return str(index)
    entries = [e.strip() for e in visible.split(",")]
    if not 0 <= index < len(entries):
        raise ValueError(f"GPU {index} is not among CUDA_VISIBLE_DEVICES={visible!r}")
    return entries[index]


@contextmanager
def claim_gpus(count: int, jobs_per_gpu: int = 1, poll_s: float = 2.0) -> Iterator[list[int]]:
    """Claim one slot on each of ``count`` distinct GPUs of gpu_ids(), held until the block ends; yields
    their CUDA indices, ascending ([] when gpu_ids() is empty or count < 1). The least loaded GPUs are taken
    (slot 0 of every GPU before slot 1 of any); when fewer than ``count`` have a free slot, waits, polling
    every ``poll_s`` s."""
    ids = gpu_ids()
    if not ids or count < 1:
        yield []
        return
    if count > len(ids):
        raise ConfigError("trainer.devices", f"{count} GPUs asked for, {len(ids)} to claim from: {ids} "
                          f"({IDS_ENV} or the visible GPUs)")
    if jobs_per_gpu < 1:
        raise ValueError(f"jobs_per_gpu must be at least 1, got {jobs_per_gpu}")
    folder = _locks_dir()
    waited = False
    while (held := _try_claim(folder, ids, count, jobs_per_gpu)) is None:
        if not waited:
            short = f"all {len(ids) * jobs_per_gpu} slots are taken" if count == 1 else \
                f"fewer than {count} GPUs have a free slot"
            log.info("waiting for a GPU slot: %s (%d GPUs x jobs_per_gpu %d; locks in %s)",
                     short, len(ids), jobs_per_gpu, folder)
            waited = True
        time.sleep(poll_s)
    try:
        log.info("claimed %s (jobs_per_gpu %d)",
                 ", ".join(f"GPU {i} slot {slot}" for i, (slot, _) in sorted(held.items())), jobs_per_gpu)
        yield sorted(held)
    finally:
        for _, fd in held.values():
            os.close(fd)


def _try_claim(folder: Path, ids: list[int], count: int, jobs_per_gpu: int) -> Optional[Claim]:
    """{index: (slot, locked fd)} for the ``count`` least loaded GPUs with a free slot (each its lowest
    one); None, holding nothing, when fewer have one. Claimers take turns (choose.lock), so probing a slot
    by locking and unlocking it never makes another claimer see it taken."""
    names = {i: re.sub(r"[^A-Za-z0-9_.-]", "_", physical_id(i)) for i in ids}
    free: Claim = {}
    busy = dict.fromkeys(ids, 0)
    keep: set[int] = set()
    chooser = _lock(folder / "choose.lock", blocking=True)
    try:
        for index in ids:
            for slot in range(jobs_per_gpu):
                fd = _lock(folder / f"gpu-{names[index]}.slot{slot}.lock")
                if fd is None:
                    busy[index] += 1
                elif index in free:
                    os.close(fd)
                else:
                    free[index] = (slot, fd)
        if len(free) >= count:
            keep = set(sorted(free, key=busy.__getitem__)[:count])  # stable: ties go to the lower index
    finally:
        for index in set(free) - keep:
            os.close(free.pop(index)[1])
        os.close(chooser)
    return free or None


def _lock(path: Path, blocking: bool = False) -> Optional[int]:
    """An fd holding an exclusive flock on ``path`` (created 0o666); None when another holds it, unless
    ``blocking``: then it waits for it."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CREAT | os.O_EXCL, 0o666)
        with suppress(PermissionError):
            os.fchmod(fd, 0o666)  # past the umask: the folder is shared by users
    except FileExistsError:
        fd = os.open(path, os.O_RDONLY)  # no O_CREAT: a sticky folder refuses it on another user's file
    try:
        fcntl.flock(fd, fcntl.LOCK_EX if blocking else fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    except BaseException:
        os.close(fd)
        raise
    return fd


def _locks_dir() -> Path:
    """IMGEXP_GPU_LOCKS, or <tempdir>/imgexp-gpu-slots; created world-writable and sticky, like /tmp."""
    folder = Path(os.environ.get(LOCKS_ENV) or Path(tempfile.gettempdir()) / "imgexp-gpu-slots")
    try:
        folder.mkdir(parents=True)
    except FileExistsError:
        return folder
    with suppress(PermissionError):
        folder.chmod(0o1777)
    return folder
