"""Where a job's processes come from, and how many: the job's own process (one device); ranks that
torch.distributed's elastic launcher (the engine of ``torchrun``) starts for ``trainer.devices=N`` on this node,
and on each of ``trainer.nodes`` machines that meet at ``trainer.rendezvous`` (:mod:`imgexp.elastic`); or the tasks
of a SLURM job step (``hydra.launcher.tasks_per_node``/``nodes``, or ``srun -n N``), which SLURM starts and
imgexp only joins. Whatever N is, the job is one MLflow run and one trial: rank 0 alone talks to MLflow and the
sweeper, and its result (or error) is the job's."""
from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Optional, Sequence

import torch
from omegaconf import DictConfig

from imgexp.config import ConfigError
from imgexp.gpus import gpu_ids

log = logging.getLogger(__name__)
LOG_FORMAT = "[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"  # Hydra's


def slurm_tasks() -> int:
    """The number of tasks of the ``srun`` job step this process is one of (1 elsewhere: a batch script has
    SLURM_NTASKS of the whole job, but runs as one process)."""
    if "SLURM_PROCID" not in os.environ:
        return 1
    return int(os.environ.get("SLURM_STEP_NUM_TASKS") or 1)


def first_task() -> bool:
    """Whether this process is the job's first (or only) SLURM task."""
    return slurm_tasks() == 1 or os.environ["SLURM_PROCID"] == "0"



def world_size(cfg: DictConfig) -> int:
    """How many ranks the job runs as, on all its nodes: SLURM's tasks, else ``trainer.devices`` on each of
    ``trainer.nodes``; checks that the ranks can run as asked."""
    world = ranks_asked(cfg) * (cfg.trainer.nodes if slurm_tasks() == 1 else 1)
    if cfg.batch < world:
        raise ConfigError("batch", f"{cfg.batch} is the global batch, shared out over the {world} ranks: it must be "
                                   f"at least {world}")
    if world > 1 and cfg.trainer.sync_bn and (cfg.device == "cpu" or not torch.cuda.is_available()):
        raise ConfigError("trainer.sync_bn", "torch's SyncBatchNorm runs on CUDA only: set it false (or null) on "
                                             "CPUs")
    return world


def ranks_asked(cfg: DictConfig) -> int:
    """The ranks of this node: SLURM's tasks of the step, else ``trainer.devices`` (``auto``: every GPU there is
    to claim, one process without)."""
    devices, tasks = str(cfg.trainer.devices), slurm_tasks()
    if tasks > 1:
        if devices not in ("auto", str(tasks)):
            raise ConfigError("trainer.devices", f"{devices}, but this SLURM job step has {tasks} tasks, which are "
                                                 f"its ranks: set trainer.devices={tasks} (or auto)")
        return tasks
    if devices == "auto":
        return max(1, len(gpu_ids())) if cfg.device in ("auto", "cuda") else 1
    n = int(devices)
    if n > 1 and cfg.device not in ("auto", "cuda", "cpu"):
        raise ConfigError("device", f"{cfg.device!r} is one device; trainer.devices={n} needs device=auto, cuda "
                                    "or cpu")
    return n


def is_rank() -> bool:
    """Whether this process is one rank of several: started by the elastic launcher, or a SLURM task."""
    return "TORCHELASTIC_RUN_ID" in os.environ or slurm_tasks() > 1


def rank_device(device: str, gpus: Sequence[int], local_rank: int) -> torch.device:
    """The device of the rank ``local_rank`` on its node: its claimed GPU, else (SLURM) the node's GPU of
    that number; ``device=cpu`` (or auto without CUDA) the CPU."""
    if device == "cpu" or not torch.cuda.is_available():
        if device == "cuda":
            raise ConfigError("device", "'cuda' asked for, but torch sees no CUDA device")
        return torch.device("cpu")
    index = gpus[local_rank] if gpus else local_rank % torch.cuda.device_count()
    torch.cuda.set_device(index)
    return torch.device("cuda", index)


def log_handlers() -> list[dict]:
    """This process's logging set-up (Hydra's, for the job), for the ranks to log as the job does."""
    out = []
    for h in logging.getLogger().handlers:
        if isinstance(h, logging.FileHandler):
            out.append({"file": h.baseFilename})
        elif isinstance(h, logging.StreamHandler) and h.stream in (sys.stdout, sys.stderr):
            out.append({"stream": "stdout" if h.stream is sys.stdout else "stderr"})
    return out


def set_up_logging(handlers: list[dict], rank: int, output_dir: Path, node: Optional[int] = None,
                   local_rank: int = 0) -> None:
    """Rank 0 logs where the job logs; every other rank to ``rank<N>.log`` in the job's directory, and its
    warnings to stderr. Over several nodes (``node``: this one's number), every rank logs to
    ``node<k>.rank<N>.log`` in its node's job directory, and each node's first rank where the job logs too."""
    root = logging.getLogger()
    root.setLevel(logging.INFO)
    root.handlers.clear()
    if rank == 0 or (node is not None and local_rank == 0):
        for spec in handlers:
            h = (logging.FileHandler(spec["file"]) if "file" in spec
                 else logging.StreamHandler(getattr(sys, spec["stream"])))
            h.setFormatter(logging.Formatter(LOG_FORMAT))
            root.addHandler(h)
    if node is not None or rank > 0:
        own = logging.FileHandler(output_dir / (f"node{node}.rank{rank}.log" if node is not None else
                                                f"rank{rank}.log"))
        own.setFormatter(logging.Formatter(LOG_FORMAT))
        warnings = logging.StreamHandler(sys.stderr)
        warnings.setLevel(logging.WARNING)
        warnings.setFormatter(logging.Formatter(f"[rank {rank}]{LOG_FORMAT}"))
        root.addHandler(own)
        root.addHandler(warnings)
    from imgexp import redact

    redact.install()


def join_slurm_step(output_dir: Path) -> None:
    """torch.distributed's environment from SLURM's (rank, world, local rank, rank 0's node, and a port of the
    job's own, which a requeued job keeps); ranks but 0 log to ``rank<N>.log``, as local ranks do."""
    env = os.environ
    first = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST", "localhost")
    if "," in first or "[" in first:
        first = subprocess.run(["scontrol", "show", "hostnames", first], capture_output=True, text=True,
                               check=True).stdout.split()[0]
    per_node = (env.get("SLURM_STEP_TASKS_PER_NODE") or env.get("SLURM_TASKS_PER_NODE") or "1").split("(")[0]
    env.update(RANK=env["SLURM_PROCID"], WORLD_SIZE=str(slurm_tasks()), LOCAL_RANK=env.get("SLURM_LOCALID", "0"),
               LOCAL_WORLD_SIZE=per_node.split(",")[0], MASTER_ADDR=env.get("MASTER_ADDR", first),
               MASTER_PORT=env.get("MASTER_PORT", str(20000 + int(env.get("SLURM_JOB_ID", "0")) % 20000)))
    if int(env["RANK"]) > 0:  # Hydra set up the job's logging in every task: one log per rank instead
        set_up_logging([], int(env["RANK"]), output_dir)


