"""The ranks of one run that torch.distributed's elastic launcher (``torchrun``'s engine) starts: ``trainer.devices``
on this node, and as many on each other node of ``trainer.nodes`` that meets this one at ``trainer.rendezvous``
(c10d rendezvous: the same command on every machine; which node holds rank 0 is the rendezvous's choice). Rank 0's
result or error is the job's; each node's first rank hands it (or its own ending) to its node's job."""
from __future__ import annotations

import hashlib
import ipaddress
import json
import logging
import multiprocessing
import os
import signal
import socket
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import torch
from omegaconf import DictConfig, OmegaConf
from torch.distributed.elastic.multiprocessing.errors import record

from imgexp.config import ConfigError, config_hash
from imgexp.errors import describe
from imgexp.launch import log_handlers, rank_device, set_up_logging

log = logging.getLogger(__name__)
FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2)  # to
# every rank, by the launcher (its default leaves out SLURM's warning signals, USR1 and USR2)
SHUTDOWN_S = 120  # after a signal, how long the ranks have to save and close before SIGKILL
STORE_TIMEOUT_S = 30  # one call to the rendezvous's store (hosted by one node's launcher), e.g. once that node died


class RankFailed(Exception):
    """The error that ended rank 0 (or, when rank 0 left none, the first rank to fail), as one line."""


class RankEnded(Exception):
    """A rank stopped (a signal, another rank's stop), as an Exception: torch's process wrapper takes a
    KeyboardInterrupt for its own SIGINT and exits 0 with no result, and the launcher would wait forever."""


class RanksStopped(KeyboardInterrupt):
    """The ranks stopped on a signal, rank 0 having saved the run's state (exit 128 + the signal)."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def outcome_of(err: BaseException) -> dict:
    """What rank 0 tells the launcher of the error that ended it (``lost``: another rank's death did)."""
    from imgexp.train.ranks import RankLost

    status = getattr(err, "run_status", None)
    kind = "pruned" if status == "pruned" else "stopped" if isinstance(err, KeyboardInterrupt) or \
        status == "interrupted" else "error"
    return {"kind": kind, "message": describe(err), "exit_code": getattr(err, "exit_code", 130),
            "lost": isinstance(err, RankLost)}


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
    """One rank, in a process of the elastic launcher's: join the group, run ``job``; the node's first rank
    writes its result or error to ``outcome_file`` (rank 0's is the run's)."""
    from imgexp.errors import raise_terminated
    from imgexp.train.ranks import Ranks

    die_with_parent()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"])
    cfg = OmegaConf.create(config)
    node = int(os.environ["GROUP_RANK"]) if OmegaConf.select(cfg, "trainer.nodes", default=1) > 1 else None
    set_up_logging(handlers, rank, Path(output_dir), node, local_rank)
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, raise_terminated)
    device = rank_device(cfg.device, gpus, local_rank)
    if device.type == "cpu":  # the ranks share the cores
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ["LOCAL_WORLD_SIZE"])))
    ranks = Ranks.join("nccl" if device.type == "cuda" else "gloo")
    if local_rank == 0:  # the node's ranks started: a rendezvous lost from now on is a node lost
        Path(outcome_file).write_text(json.dumps({"kind": "started"}))
    try:
        result = job(cfg, Path(output_dir), overrides, ranks, device, gpus)
        if local_rank == 0:
            Path(outcome_file).write_text(json.dumps({"kind": "ok", "value": result}))
        return result
    except BaseException as err:
        if local_rank == 0:
            Path(outcome_file).write_text(json.dumps(outcome_of(err)))
        if isinstance(err, KeyboardInterrupt):
            raise RankEnded(f"{type(err).__name__}: {describe(err)}") from err
        raise  # (a rank that returned would wait for the others' results until the launcher killed it)
    finally:
        ranks.leave()
        for signum in (signal.SIGTERM, signal.SIGHUP):  # one more, while the process exits, ends it quietly
            signal.signal(signum, signal.SIG_DFL)


FOLLOWERS = ("RankEnded", "StoppedByRankZero", "RankLost")  # endings caused elsewhere
RESUMABLE = "the run stopped at its last checkpoint (resume=auto continues it)"


def first_failure(err) -> str:
    """``rank N: what ended it`` for the rank that failed first of its own accord (not by stopping with the
    others, or for want of a rank that had died)."""
    described = []
    for rank, failure in sorted(err.failures.items(), key=lambda kv: kv[1].timestamp):
        recorded = failure.error_file_data.get("message")  # @record's: {"message": "Type: ...", "extraInfo": ...}
        what = (recorded.get("message", "") if isinstance(recorded, dict) else
                f"killed by {failure.signal_name()}" if failure.exitcode < 0 else f"exit code {failure.exitcode}")
        described.append(f"rank {rank}: {what}")
        if not what.startswith(FOLLOWERS):
            return described[-1]
    return described[0]


def loopback(host: str) -> bool:
    """Whether ``host`` names this machine's loopback (127.0.0.0/8, ::1, localhost)."""
    try:
        return ipaddress.ip_address(socket.gethostbyname(host)).is_loopback
    except (OSError, ValueError):
        return False


def job_number() -> int:
    """The job's number in its sweep (0 for a single run): two jobs of one sweep with one config meet apart."""
    from hydra.core.hydra_config import HydraConfig

    return OmegaConf.select(HydraConfig.get(), "job.num", default=0) if HydraConfig.initialized() else 0


def rendezvous(cfg: DictConfig, local: int) -> tuple[Any, str]:
    """The launcher's settings for this node's ``local`` ranks of the job's ``trainer.nodes``, and a
    line naming where the nodes meet. Every node of a run derives the same rendezvous id from the config, so the
    same command started on each machine forms one run (and a sweep's job on each, one job)."""
    from torch.distributed.launcher.api import LaunchConfig

    t = OmegaConf.select(cfg, "trainer", default=None) or OmegaConf.create({})
    nodes = t.get("nodes", 1)
    common = dict(nproc_per_node=local, max_restarts=0, start_method="spawn", monitor_interval=0.1,
                  shutdown_timeout=SHUTDOWN_S, rdzv_backend="c10d")
    if nodes == 1:  # the ranks talk over the loopback
        os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
        return LaunchConfig(min_nodes=1, max_nodes=1, run_id=uuid.uuid4().hex, rdzv_endpoint="127.0.0.1:0",
                            **common), "this node"
    host = t.rendezvous.rsplit(":", 1)[0]
    if loopback(host):  # nodes on one machine (tests): every address on the loopback
        os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    digest = hashlib.sha256(f"{t.rendezvous} {config_hash(cfg)} {job_number()}".encode()).hexdigest()[:16]
    timeout = t.rendezvous_timeout_s
    return LaunchConfig(min_nodes=nodes, max_nodes=nodes, run_id=f"imgexp-{digest}", rdzv_endpoint=t.rendezvous,
                        rdzv_configs={"join_timeout": timeout, "read_timeout": min(timeout, STORE_TIMEOUT_S)},
                        local_addr="127.0.0.1" if loopback(host) else None, **common), \
        f"{nodes} nodes meeting at {t.rendezvous}"


def launch_ranks(job: Callable, cfg: DictConfig, output_dir: Path, overrides: Sequence[str], world: int,
                 gpus: list[int]) -> Any:
    """Run ``job(cfg, output_dir, overrides, ranks, device, gpus)`` as ``world`` ranks on this node (of the run's
    ``trainer.nodes``) and return rank 0's result, or raise its error (the job's run, trial and sweep see one
    job); on a node without rank 0, its first rank's."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.elastic.rendezvous.api import RendezvousError
    from torch.distributed.launcher.api import elastic_launch

    os.environ.setdefault("TORCHELASTIC_SIGNALS_TO_HANDLE", ",".join(s.name for s in FORWARDED))
    quiet_tracker = "ignore:resource_tracker:UserWarning"  # "leaked semaphores" of a killed rank, which it frees
    if quiet_tracker not in os.environ.get("PYTHONWARNINGS", ""):
        os.environ["PYTHONWARNINGS"] = ",".join(filter(None, [os.environ.get("PYTHONWARNINGS"), quiet_tracker]))
    config, where = rendezvous(cfg, world)
    handlers = {s: signal.getsignal(s) for s in FORWARDED}
    method = multiprocessing.get_start_method(allow_none=True)  # loky's, in a joblib launcher's worker: a
    multiprocessing.set_start_method("spawn", force=True)  # spawned rank could not start under that name
    on_gpus = bool(gpus) and torch.cuda.is_available()
    log.info("%d ranks on this node (torch.distributed, %s; %s)%s", world, "nccl" if on_gpus else "gloo", where,
             f": GPUs {', '.join(map(str, gpus))}" if on_gpus else "")
    fd, outcome_file = tempfile.mkstemp(prefix="imgexp-rank0-", suffix=".json")
    os.close(fd)
    failure: Optional[str] = None  # the first rank to fail, when one did
    lost: Optional[str] = None  # the rendezvous, once the ranks had started: its node was lost
    signalled: Optional[signal.Signals] = None
    quiet = quiet_launcher_logs()
    try:
        elastic_launch(config, rank_main)(job, OmegaConf.to_container(cfg, resolve=True), str(output_dir),
                                          list(overrides), gpus, log_handlers(), outcome_file)
    except ChildFailedError as err:
        failure = first_failure(err)
    except SignalException as err:  # the ranks got the signal too
        signalled = err.sigval
    except RendezvousError as err:
        reason = describe(err.__cause__ or err)[:300]
        if not Path(outcome_file).read_text():  # a node that cannot reach it, or nodes that never all came
            raise ConfigError("trainer.rendezvous", f"{where}: {reason}") from None
        lost = f"the node hosting the rendezvous ({where}) was lost: {reason}"
    finally:
        for signum, handler in handlers.items():  # the launcher's handlers replaced ours
            signal.signal(signum, handler)
        multiprocessing.set_start_method(method, force=True)
        for logger, level in quiet:
            logger.setLevel(level)
        text = Path(outcome_file).read_text()
        os.unlink(outcome_file)
    outcome = json.loads(text) if text else {"kind": "started"}
    if outcome["kind"] == "ok":
        return outcome["value"]
    if lost or outcome.get("lost"):  # a rank or a node died: say which, when this node knows
        cause = lost or (f"the run lost {failure}" if failure and not failure.split(": ", 1)[1].startswith(FOLLOWERS)
                         else outcome["message"])
        raise RanksStopped(f"{cause}; {RESUMABLE}", 130)
    if outcome["kind"] == "started":  # rank 0 left no word: it was killed, or another rank failed first
        if signalled:
            raise RanksStopped(f"stopped by {signalled.name}", 128 + signalled)
        raise RankFailed(failure or "rank 0 ended without a result")
    message = outcome["message"]
    if failure and not failure.startswith("rank 0"):
        message += f" (first to fail: {failure})"
    if outcome["kind"] == "pruned":
        from imgexp.tracking.pruning import TrialPruned

        raise TrialPruned(message)
    if outcome["kind"] == "stopped":
        raise RanksStopped(message, outcome["exit_code"])
    raise RankFailed(message)
