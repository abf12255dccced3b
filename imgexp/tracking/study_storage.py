"""Tracking, middle layer (nothing of tracking/): the Optuna storage a study lives in, named by
``hydra.sweeper.storage`` and handed to every job (``trial.storage``):

- a database URL (``sqlite:///...``, ``postgresql://...``, any SQLAlchemy URL): Optuna's ``RDBStorage``, whose
  heartbeats tell a dead worker's trials;
- a journal file on a file system the workers share (``journal:///shared/studies/s.log``): Optuna's
  ``JournalStorage`` on its ``JournalFileBackend`` and that backend's own lock, for clusters without a database
  server. A journal has no heartbeats of its own: the sweepers keep one per trial in a trial system attr.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import optuna
from optuna.trial import TrialState

JOURNAL = "journal://"
HEARTBEAT_ATTR = "imgexp:heartbeat"  # a journal trial's last heartbeat (Unix seconds)
CLAIMED_ATTR = "imgexp:claimed"  # set, after its first heartbeat, by the worker that asked for the trial


def journal_path(url: str) -> Optional[Path]:
    """The journal file of a ``journal:///path`` URL; None for a database URL."""
    return Path(url[len(JOURNAL):]) if url.startswith(JOURNAL) else None


def absolute(url: str) -> str:
    """``url`` with a relative SQLite or journal path made absolute: the jobs may run in other directories."""
    for prefix in ("sqlite:///", JOURNAL):
        if url.startswith(prefix) and not url.startswith(prefix + "/"):
            return f"{prefix}{Path(url[len(prefix):]).resolve()}"
    return url


def open_storage(url: str, heartbeat_interval: Optional[int] = None) -> optuna.storages.BaseStorage:
    """The storage at ``url`` (its folder made, for a file); RDB heartbeats every ``heartbeat_interval`` s
    (None: none, as for a job that only reports to its trial)."""
    path = journal_path(url) or (Path(url[len("sqlite:///"):]) if url.startswith("sqlite:///") else None)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
    if journal_path(url) is not None:
        from optuna.storages.journal import JournalFileBackend

        return optuna.storages.JournalStorage(JournalFileBackend(str(path)))
    beats = {"heartbeat_interval": heartbeat_interval, "grace_period": 2 * heartbeat_interval} \
        if heartbeat_interval else {}
    return optuna.storages.RDBStorage(url, engine_kwargs={"connect_args": {"timeout": 60}}
                                      if url.startswith("sqlite") else None, **beats)


def record_heartbeat(storage: optuna.storages.BaseStorage, trial_id: int) -> None:
    """Say that the worker running trial ``trial_id`` lives."""
    if isinstance(storage, optuna.storages.RDBStorage):
        storage.record_heartbeat(trial_id)
        return
    try:
        storage.set_trial_system_attr(trial_id, HEARTBEAT_ATTR, time.time())
    except optuna.exceptions.UpdateFinishedTrialError:  # another worker took it for lost: it is run again
        pass


def mark_claimed(storage: optuna.storages.BaseStorage, trial_id: int) -> None:
    """Beat trial ``trial_id``'s first heartbeat, then mark it claimed; the worker that asked for it does this
    before it lets go of the study's lock."""
    record_heartbeat(storage, trial_id)
    storage.set_trial_system_attr(trial_id, CLAIMED_ATTR, True)


def fail_stale_trials(study: optuna.Study, storage: optuna.storages.BaseStorage, grace_s: float) -> None:
    """Mark FAIL the RUNNING trials of ``study`` (in ``storage``) whose worker has been silent for ``grace_s``
    seconds, or died between asking for the trial and :func:`mark_claimed` (a trial with no heartbeat, which
    neither Optuna's RDB nor a journal would ever find stale). Call it under the study's lock, which a claim
    holds from ask to mark: an unmarked trial is then one whose worker died. They are retried (see the Optuna
    sweeper's retries)."""
    rdb = isinstance(storage, optuna.storages.RDBStorage)
    if rdb:
        optuna.storages.fail_stale_trials(study)
    now = time.time()
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        silent = not rdb and now - trial.system_attrs.get(HEARTBEAT_ATTR, now) > grace_s
        if silent or CLAIMED_ATTR not in trial.system_attrs:
            try:
                storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
            except optuna.exceptions.UpdateFinishedTrialError:  # another worker got there first (or it ended)
                pass
