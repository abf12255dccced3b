"""The ranks of one run (torch.distributed): which one this process is, and the few collectives the
training engine needs: a stop flag every step, sums of metric counts, the rows of a sharded evaluation,
per-rank state for checkpoints, and rank 0's buffers before an evaluation. One process is rank 0 of 1,
and every method is then a no-op. Control messages (flags, objects) travel on a gloo group on the CPU,
so they never wait for the GPU."""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Optional

import torch
import torch.distributed as dist
from torch import nn


class RankLost(RuntimeError):
    """A collective failed because another rank of the run died (kill -9, out of memory, a lost node). The
    run ends resumable from its last checkpoint."""

    run_status = "interrupted"


PEER_ERRORS = ("Connection closed by peer", "Connection reset by peer", "NCCL", "gloo")
COLLECTIVE_TIMEOUT_S = 300  # a collective waits this long for a rank gone silent (a node lost without a word)


@dataclass
class Ranks:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    control: Optional[object] = None  # the gloo process group for CPU-side messages

    @property
    def main(self) -> bool:
        return self.rank == 0

    @classmethod
    def join(cls, backend: str) -> "Ranks":
        """Join the process group torch.distributed's environment variables describe (RANK, WORLD_SIZE,
        MASTER_ADDR, ...): ``backend`` for tensors, and gloo for control messages."""
        timeout = timedelta(seconds=COLLECTIVE_TIMEOUT_S)
        dist.init_process_group(backend, timeout=timeout)
        control = dist.new_group(backend="gloo", timeout=timeout) if backend != "gloo" else dist.group.WORLD
        return cls(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")), control)

    def lost(self, err: BaseException) -> bool:
        """Whether ``err`` is a collective's failure: some other rank is gone."""
        return self.world > 1 and (isinstance(err, dist.DistError) or any(w in str(err) for w in PEER_ERRORS))

    def raise_if_lost(self, err: BaseException) -> None:
        """Raise :class:`RankLost` (from ``err``) when ``err`` says another rank is gone (see :meth:`lost`)."""
        if self.lost(err):
            what = re.sub(r"^\[[^\]]*\]\s*", "", str(err).strip().splitlines()[0])  # less gloo's source line
            raise RankLost(f"another rank of the run was lost ({what.split('. ')[0][:200]})") from err

    def leave(self) -> None:
        if self.world > 1 and dist.is_initialized():
            dist.destroy_process_group()

    def any(self, flag: bool) -> bool:
        """Whether ``flag`` is true on some rank (every rank calls it, and gets the same answer)."""
        if self.world == 1:
            return flag
        t = torch.tensor([int(flag)])
        dist.all_reduce(t, group=self.control)
        return bool(t.item())

    def sum(self, t: torch.Tensor) -> torch.Tensor:
        """``t`` summed over the ranks (counts: exact totals, not a mean of per-rank means)."""
        if self.world == 1:
            return t
        t = t.clone()
        dist.all_reduce(t)
        return t

    def gather_rows(self, t: torch.Tensor) -> torch.Tensor:
        """Every rank's rows of ``t`` (which may differ in number), concatenated in rank order, on every rank."""
        if self.world == 1:
            return t
        sizes = self.objects(len(t))
        padded = torch.zeros((max(sizes), *t.shape[1:]), dtype=t.dtype, device=t.device)
        padded[: len(t)] = t
        parts = [torch.empty_like(padded) for _ in range(self.world)]
        dist.all_gather(parts, padded)
        return torch.cat([p[:n] for p, n in zip(parts, sizes)])

    def objects(self, obj: Any) -> list:
        """Every rank's ``obj`` (picklable), in rank order, on every rank."""
        if self.world == 1:
            return [obj]
        out: list = [None] * self.world
        dist.all_gather_object(out, obj, group=self.control)
        return out

    def share(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank."""
        if self.world == 1:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0, group=self.control)
        return box[0]

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier(group=self.control)

    def copy_buffers(self, module: nn.Module) -> None:
        """Rank 0's buffers (BatchNorm statistics) into every rank's ``module``, so that all ranks evaluate
        the very weights rank 0 checkpoints."""
        if self.world > 1:
            for b in module.buffers():
                dist.broadcast(b, src=0)

