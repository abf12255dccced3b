"""Where a job's processes come from: the job's own process (one device); the ranks that torch.distributed's
elastic launcher (the engine of ``torchrun``) starts on this node for ``trainer.devices=N``; or the tasks of
a SLURM job step (``hydra.launcher.tasks_per_node``/``nodes``, or ``srun -n N``), which SLURM starts and
imgexp only joins. Whatever N is, the job is one Hydra output directory, one MLflow run and one trial:
rank 0 alone talks to MLflow and the sweeper, and its result (or error) is the job's."""
from __future__ import annotations

import json
import logging
import multiprocessing
import os
import signal
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import torch
from torch.distributed.elastic.multiprocessing.errors import record
from omegaconf import DictConfig, OmegaConf

from imgexp.config import ConfigError
from imgexp.errors import describe
from imgexp.gpus import gpu_ids

log = logging.getLogger(__name__)
FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2)  # to
# every rank, by the launcher (its default leaves out SLURM's warning signals, USR1 and USR2)
SHUTDOWN_S = 120  # after a signal, how long the ranks have to save and close before SIGKILL
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
    """How many ranks the job runs as: SLURM's tasks, else ``trainer.devices`` (``auto``: every GPU there is
    to claim, one process without); checks that the ranks can run as asked."""
    world = ranks_asked(cfg)
    if world > 1 and cfg.trainer.sync_bn and (cfg.device == "cpu" or not torch.cuda.is_available()):
        raise ConfigError("trainer.sync_bn", "torch's SyncBatchNorm runs on CUDA only: set it false (or null) on "
                                             "CPUs")
    return world


def ranks_asked(cfg: DictConfig) -> int:
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


# ---------------------------------------------------------------- the ranks of one node
class RankFailed(Exception):
    """The error that ended rank 0 (or, when rank 0 left none, the first rank to fail), as one line."""


class RanksStopped(KeyboardInterrupt):
    """The ranks stopped on a signal, rank 0 having saved the run's state (exit 128 + the signal)."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def log_handlers() -> list[dict]:
    """This process's logging set-up (Hydra's, for the job), for the ranks to log as the job does."""
    out = []
    for h in logging.getLogger().handlers:
        if isinstance(h, logging.FileHandler):
            out.append({"file": h.baseFilename})
        elif isinstance(h, logging.StreamHandler) and h.stream in (sys.stdout, sys.stderr):
            out.append({"stream": "stdout" if h.stream is sys.stdout else "stderr"})
    return out


def set_up_logging(handlers: list[dict], rank: int, output_dir: Path) -> None:
    """Rank 0 logs where the job logs; every other rank to ``rank<N>.log`` in the job's directory, and its
    warnings to stderr."""
    root = logging.getLogger()
    root.setLevel(logging.INFO)
    root.handlers.clear()
    if rank == 0:
        for spec in handlers:
            h = (logging.FileHandler(spec["file"]) if "file" in spec
                 else logging.StreamHandler(getattr(sys, spec["stream"])))
            h.setFormatter(logging.Formatter(LOG_FORMAT))
            root.addHandler(h)
    else:
        own = logging.FileHandler(output_dir / f"rank{rank}.log")
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


def outcome_of(err: BaseException) -> dict:
    """What rank 0 tells the launcher of the error that ended it."""
    status = getattr(err, "run_status", None)
    kind = "pruned" if status == "pruned" else "stopped" if isinstance(err, KeyboardInterrupt) or \
        status == "interrupted" else "error"
    return {"kind": kind, "message": describe(err), "exit_code": getattr(err, "exit_code", 130)}


def die_with_parent() -> None:
    """SIGTERM this process when its launcher dies (Linux), so no rank trains on after a kill -9 of the job:
    the ranks stop as on any SIGTERM, rank 0 saving the run's state."""
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def quiet_launcher_logs() -> list[tuple[logging.Logger, int]]:
    """Silence the launcher's own error and warning lines (a failed rank's traceback, "Terminating process"):
    the job's one error line says what failed. Returns the levels to restore."""
    loggers = [lg for name, lg in logging.Logger.manager.loggerDict.items() if isinstance(lg, logging.Logger)
               and name.startswith(("torch.distributed.elastic", "torch.multiprocessing"))]
    saved = [(lg, lg.level) for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.CRITICAL)
    return saved


@record
def rank_main(job: Callable, config: dict, output_dir: str, overrides: list[str], gpus: list[int],
              handlers: list[dict], outcome_file: str) -> Any:
    """One rank, in a process of the elastic launcher's: join the group, run ``job``; rank 0 writes its
    result or error to ``outcome_file``."""
    from imgexp.errors import raise_terminated
    from imgexp.train.ranks import Ranks

    die_with_parent()
    rank = int(os.environ["RANK"])
    set_up_logging(handlers, rank, Path(output_dir))
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, raise_terminated)
    cfg = OmegaConf.create(config)
    device = rank_device(cfg.device, gpus, int(os.environ["LOCAL_RANK"]))
    if device.type == "cpu":  # the ranks share the cores
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ["LOCAL_WORLD_SIZE"])))
    ranks = Ranks.join("nccl" if device.type == "cuda" else "gloo")
    try:
        result = job(cfg, Path(output_dir), overrides, ranks, device, gpus)
        if rank == 0:
            Path(outcome_file).write_text(json.dumps({"kind": "ok", "value": result}))
        return result
    except BaseException as err:
        if rank == 0:
            Path(outcome_file).write_text(json.dumps(outcome_of(err)))
        raise  # (a rank that returned would wait for the others' results until the launcher killed it)
    finally:
        ranks.leave()


FOLLOWERS = ("StoppedByRankZero", "TrainingInterrupted", "RankLost", "Terminated")  # endings caused elsewhere


def first_failure(err) -> str:
    """``rank N: what ended it`` for the rank that failed first of its own accord (not by stopping with the
    others, or for want of a rank that had died)."""
    described = []
    for failure in sorted(err.failures.values(), key=lambda f: f.timestamp):
        recorded = failure.error_file_data.get("message")  # @record's: {"message": "Type: ...", "extraInfo": ...}
        what = (recorded.get("message", "") if isinstance(recorded, dict) else
                f"killed by {failure.signal_name()}" if failure.exitcode < 0 else f"exit code {failure.exitcode}")
        described.append(f"rank {failure.local_rank}: {what}")
        if not what.startswith(FOLLOWERS):
            return described[-1]
    return described[0]


def launch_ranks(job: Callable, cfg: DictConfig, output_dir: Path, overrides: Sequence[str], world: int,
                 gpus: list[int]) -> Any:
    """Run ``job(cfg, output_dir, overrides, ranks, device, gpus)`` as ``world`` ranks on this node and return
    rank 0's result, or raise its error (the job's run, trial and sweep see one job)."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")  # one node: the ranks talk over the loopback
    os.environ.setdefault("TORCHELASTIC_SIGNALS_TO_HANDLE", ",".join(s.name for s in FORWARDED))
    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=world, run_id=uuid.uuid4().hex,
                          rdzv_backend="c10d", rdzv_endpoint="127.0.0.1:0", max_restarts=0, start_method="spawn",
                          monitor_interval=0.1, shutdown_timeout=SHUTDOWN_S)
    handlers = {s: signal.getsignal(s) for s in FORWARDED}
    method = multiprocessing.get_start_method(allow_none=True)  # loky's, in a joblib launcher's worker: a
    multiprocessing.set_start_method("spawn", force=True)  # spawned rank could not start under that name
    on_gpus = bool(gpus) and torch.cuda.is_available()
    log.info("%d ranks on this node (torch.distributed, %s)%s", world, "nccl" if on_gpus else "gloo",
             f": GPUs {', '.join(map(str, gpus))}" if on_gpus else "")
    fd, outcome_file = tempfile.mkstemp(prefix="imgexp-rank0-", suffix=".json")
    os.close(fd)
    failure: Optional[str] = None  # the first rank to fail, when one did
    signalled: Optional[signal.Signals] = None
    quiet = quiet_launcher_logs()
    try:
        elastic_launch(config, rank_main)(job, OmegaConf.to_container(cfg, resolve=True), str(output_dir),
                                          list(overrides), gpus, log_handlers(), outcome_file)
    except ChildFailedError as err:
        failure = first_failure(err)
    except SignalException as err:  # the ranks got the signal too
        signalled = err.sigval
    finally:
        for signum, handler in handlers.items():  # the launcher's handlers replaced ours
            signal.signal(signum, handler)
        multiprocessing.set_start_method(method, force=True)
        for logger, level in quiet:
            logger.setLevel(level)
        text = Path(outcome_file).read_text()
        os.unlink(outcome_file)
    if not text:  # rank 0 left no word: it was killed, or another rank failed first
        if signalled:
            raise RanksStopped(f"stopped by {signalled.name}", 128 + signalled)
        raise RankFailed(failure or "rank 0 ended without a result")
    outcome = json.loads(text)
    if outcome["kind"] == "ok":
        return outcome["value"]
    message = outcome["message"]
    if failure and not failure.startswith("rank 0"):
        message += f" (first to fail: {failure})"
    if outcome["kind"] == "pruned":
        from imgexp.tracking.pruning import TrialPruned

        raise TrialPruned(message)
    if outcome["kind"] == "stopped":
        raise RanksStopped(message, outcome["exit_code"])
    raise RankFailed(message)
