"""Tracking, middle layer (uses store.py): whether the process behind a RUNNING run or sweep parent still lives, so that a lost one (kill -9, the
OOM killer, a dead node, a preempted container) is closed KILLED, which makes it resumable, and a live
one is never resumed by a second process.

On the run's own host its pid answers. From anywhere, its heartbeat does: a tag (``imgexp.heartbeat``,
Unix seconds) that a thread renews every :data:`HEARTBEAT_S` while the run is open; silent for
:data:`LOST_AFTER_S`, a run of another host is taken as lost.
"""
from __future__ import annotations

import logging
import os
import socket
import threading
import time
from typing import Optional

from imgexp.config import ConfigError
from imgexp.locks import sqlite_path, store_lock
from imgexp.tracking.store import ERROR_TAG, HEARTBEAT_TAG, HOST_TAG, PID_TAG, SLURM_TAG, STATUS_TAG, set_tags

log = logging.getLogger(__name__)
HEARTBEAT_S = 60.0
LOST_AFTER_S = 600.0  # ten missed heartbeats
CLAIM_SETTLE_S = 1.0  # on a server: how long a claim of a run waits to see whether another one followed it


def slurm_attempt() -> Optional[tuple[str, str]]:
    """(this SLURM job, which run of it: SLURM_RESTART_COUNT) inside a SLURM job, else None."""
    job = os.environ.get("SLURM_JOB_ID")
    if job is None:
        return None
    task = os.environ.get("SLURM_ARRAY_TASK_ID")
    return (f"{job}_{task}" if task else job), os.environ.get("SLURM_RESTART_COUNT", "0")


def owner_tags() -> dict[str, str]:
    """The tags naming this process as a run's owner, with a first heartbeat (and its SLURM job)."""
    tags = {HOST_TAG: socket.gethostname(), PID_TAG: str(os.getpid()), HEARTBEAT_TAG: str(int(time.time()))}
    attempt = slurm_attempt()
    if attempt is not None:
        tags[SLURM_TAG] = "#".join(attempt)
    return tags


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def owner_alive(tags: dict[str, str], now: Optional[float] = None) -> bool:
    """Whether the process that owns a run (its ``owner_tags``) still runs: on this host, its pid; on
    another, a heartbeat newer than :data:`LOST_AFTER_S` (a run with neither tag cannot be judged: alive)."""
    attempt, recorded = slurm_attempt(), tags.get(SLURM_TAG, "").split("#")
    if attempt is not None and recorded[0] == attempt[0] and recorded != list(attempt):
        return False  # an earlier run of this very SLURM job, which SLURM requeued: gone
    if tags.get(HOST_TAG) == socket.gethostname() and tags.get(PID_TAG, "").isdigit():
        return pid_alive(int(tags[PID_TAG]))
    beat = tags.get(HEARTBEAT_TAG)
    if beat is None:
        return True
    return (now or time.time()) - float(beat) < LOST_AFTER_S


def describe_owner(tags: dict[str, str]) -> str:
    """``pid 123 on node7, last heartbeat 20 s ago`` for messages."""
    beat = tags.get(HEARTBEAT_TAG)
    ago = f", last heartbeat {time.time() - float(beat):.0f} s ago" if beat else ""
    return f"pid {tags.get(PID_TAG, '?')} on {tags.get(HOST_TAG, '?')}{ago}"


def close_lost_runs(client, experiment: str) -> None:
    """Mark KILLED the RUNNING runs and sweep parents of ``experiment`` whose owner is gone: nothing else
    would ever close them. Their checkpoints stay, so ``resume=auto`` and a rerun sweep continue them."""
    for run in client.search_runs([experiment], "attributes.status = 'RUNNING'", max_results=50000):
        tags = run.data.tags
        if HOST_TAG not in tags or owner_alive(tags):
            continue
        set_tags(client, run.info.run_id, {STATUS_TAG: "lost", ERROR_TAG: f"its process ({describe_owner(tags)}) "
                                                                       "ended without closing the run"})
        client.set_terminated(run.info.run_id, "KILLED")
        log.warning("run %s: its process (%s) is gone; marked KILLED", run.info.run_id, describe_owner(tags))


def check_resumable(run) -> None:
    """Refuse, in one line, a run that is FINISHED (nothing to continue) or whose process still runs it
    (two processes would log into one run)."""
    run_id, status = run.info.run_id, run.info.status
    if status == "FINISHED":
        raise ConfigError("resume", f"MLflow run {run_id} is FINISHED: there is nothing to resume (start a new "
                                    "run without resume=)")
    if status == "RUNNING" and owner_alive(run.data.tags):
        raise ConfigError("resume", f"MLflow run {run_id} is still running ({describe_owner(run.data.tags)}): "
                                    "stop that process first (SIGTERM), then resume")


def claim(client, run_id: str) -> None:
    """Make this process the owner of run ``run_id``, to resume it, if :func:`check_resumable`. On SQLite
    the check and the claim are one step under the store's lock; on a server the last claim wins, and a
    process that finds another owner a moment after its own claim gives way. Two processes resuming one
    run at once: one trains, the other stops with one line."""
    with store_lock(client.tracking_uri):
        check_resumable(client.get_run(run_id))
        set_tags(client, run_id, owner_tags())
        client.update_run(run_id, status="RUNNING")
    if sqlite_path(client.tracking_uri) is None:
        time.sleep(CLAIM_SETTLE_S)
        tags = client.get_run(run_id).data.tags
        if (tags.get(HOST_TAG), tags.get(PID_TAG)) != (socket.gethostname(), str(os.getpid())):
            raise ConfigError("resume", f"MLflow run {run_id} was just taken by another process "
                                        f"({describe_owner(tags)})")


class Heartbeat:
    """Renews a run's heartbeat tag every :data:`HEARTBEAT_S` from a daemon thread until :meth:`stop`;
    a failed renewal (the server away) is skipped."""

    def __init__(self, client, run_id: str) -> None:
        self.client, self.run_id = client, run_id
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._beat, name=f"heartbeat-{run_id[:8]}", daemon=True)
        self.thread.start()

    def _beat(self) -> None:
        while not self.stopped.wait(HEARTBEAT_S):
            try:
                set_tags(self.client, self.run_id, {HEARTBEAT_TAG: str(int(time.time()))})
            except Exception:  # noqa: BLE001 - unreachable now: the next beat tries again
                pass

    def stop(self) -> None:
        self.stopped.set()
