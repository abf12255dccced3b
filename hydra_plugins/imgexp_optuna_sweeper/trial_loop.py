"""One worker's share of a study: claim a trial (a retry of an interrupted one first), launch its job through
Hydra's launcher, tell the study the outcome, until the study has ``n_trials``; several workers (processes,
machines, SLURM jobs) on one storage share the study through :class:`StudyLock`."""
from __future__ import annotations

import logging
import math
import signal
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any, Callable, List, Optional

import optuna
from hydra._internal.core_plugins.basic_launcher import BasicLauncher
from hydra.core.utils import JobReturn
from hydra.plugins.sweeper import Sweeper
from optuna.trial import TrialState

from hydra_plugins.imgexp_optuna_sweeper.retries import (ATTEMPT_ATTR, MAX_ATTEMPTS, RETRY_ATTR, given_up,
                                                         interrupted, not_yet_retried)
from hydra_plugins.imgexp_optuna_sweeper.search_space import as_override, quote
from hydra_plugins.imgexp_optuna_sweeper.study_lock import StudyLock
from imgexp.errors import describe
from imgexp.sweep_nodes import SweepNodes
from imgexp.sweep_overrides import job_name
from imgexp.tracking.store import ERROR_TAG
from imgexp.tracking.study_storage import fail_stale_trials, mark_claimed, record_heartbeat
from imgexp.tracking.sweep import ParentRun, failure, job_error
from imgexp.tracking.trial import CHECKPOINT_ATTR

log = logging.getLogger(__name__)


def custom_space(path: Optional[str]) -> Optional[Callable]:
    """hydra-optuna-sweeper's ``custom_search_space``: the function ``fn(config, trial)`` at a dotted path."""
    if not path:
        return None
    from hydra.utils import get_method

    return get_method(path)


def outcome(ret: JobReturn) -> tuple[TrialState, list[float], Optional[BaseException]]:
    """What a finished job tells its trial: PRUNED; COMPLETE with its values; or FAIL with the error (an
    exception, or values that are not finite numbers)."""
    error = job_error(ret)
    if isinstance(error, optuna.TrialPruned):
        return TrialState.PRUNED, [], error
    if error is not None:
        return TrialState.FAIL, [], error
    values = list(ret.return_value) if isinstance(ret.return_value, (list, tuple)) else [ret.return_value]
    if all(isinstance(v, (int, float)) and math.isfinite(v) for v in values):
        return TrialState.COMPLETE, values, None
    return TrialState.FAIL, [], ValueError(f"the job returned {values}, not finite numbers")


class TrialLoop:
    """One process's share of a study: claim, launch, record, until the study has ``n_trials``."""

    def __init__(self, sweeper: Sweeper, study: optuna.Study, storage, lock: StudyLock, parent: ParentRun,
                 space: dict, overrides: list[str], n_trials: int, nodes: Optional[SweepNodes] = None) -> None:
        self.sweeper, self.study, self.storage, self.lock, self.parent = sweeper, study, storage, lock, parent
        self.space, self.overrides, self.n_trials, self.nodes = space, overrides, n_trials, nodes
        self.extend = custom_space(sweeper.cfg.custom_search_space)
        parallel = sweeper.cfg.n_jobs > 1 and not isinstance(sweeper.launcher, BasicLauncher) and nodes is None
        if sweeper.cfg.n_jobs > 1 and not parallel:
            log.warning("n_jobs=%d %s runs one trial at a time: use hydra/launcher=joblib, or start several "
                        "workers", sweeper.cfg.n_jobs, "with trials over several nodes (each uses them all)"
                        if nodes is not None else "with the in-process launcher")
        self.pool = ThreadPoolExecutor(sweeper.cfg.n_jobs) if parallel else None
        self.in_flight: dict[Future, optuna.Trial] = {}
        self.returns: List[JobReturn] = []
        self.failed: list[dict] = []
        self.given_up: set[int] = set()  # trials interrupted MAX_ATTEMPTS times, already in ``failed``
        self.done = {"complete": 0, "pruned": 0, "failed": 0}
        self.beat = threading.Event()

    def claim(self) -> Optional[optuna.Trial]:
        """Next trial of the study: a retry of an interrupted one first; None once n_trials are taken."""
        with self.lock.held():
            fail_stale_trials(self.study, self.storage, 2 * self.sweeper.cfg.heartbeat_interval)
            for t in self.study.get_trials(deepcopy=False):
                if given_up(t) and t.number not in self.given_up:
                    self.given_up.add(t.number)
                    self.failed.append({"job": t.number, "trial": t.number, "overrides": [], "error": (
                        f"interrupted {MAX_ATTEMPTS} times with {t.params}: not run again")})
            for t in not_yet_retried(self.study.get_trials(deepcopy=False)):
                log.info("trial %d was interrupted: running it again", t.number)
                resume = {CHECKPOINT_ATTR: t.user_attrs[CHECKPOINT_ATTR]} if CHECKPOINT_ATTR in t.user_attrs else {}
                attempt = t.user_attrs.get(ATTEMPT_ATTR, 1) + 1
                self.study.enqueue_trial(t.params, user_attrs={RETRY_ATTR: t.number, ATTEMPT_ATTR: attempt, **resume})
                self.parent.end_lost_runs(t.number)
            trials = self.study.get_trials(deepcopy=False)
            waiting = any(t.state == TrialState.WAITING for t in trials)
            if sum(not interrupted(t) or given_up(t) for t in trials) >= self.n_trials and not waiting:
                return None
            trial = self.study.ask(self.space)
            if self.extend is not None:  # its suggest_* calls add parameters (a retry's come enqueued)
                self.extend(self.sweeper.config, trial)
            mark_claimed(self.storage, trial._trial_id)
            return trial

    def launch(self, trial: optuna.Trial) -> JobReturn:
        params = [as_override(k, v) for k, v in trial.params.items()]
        shown = [as_override(k, float(f"{v:.4g}") if isinstance(v, float) else v) for k, v in trial.params.items()]
        overrides = params + self.overrides + [f"trial.id={trial._trial_id}", f"trial.number={trial.number}"] + \
            job_name([f"trial {trial.number}:", *shown])  # the run's name: 4 significant digits
        interrupted_dir = trial.user_attrs.get(CHECKPOINT_ATTR)  # a retry: continue from the lost trial's state
        if interrupted_dir and (Path(interrupted_dir) / "last.pt").exists():
            overrides.append(f"resume={quote(interrupted_dir)}")
        if self.nodes is not None:
            self.nodes.publish([overrides], trial.number)
        return self.sweeper.launcher.launch([overrides], initial_job_idx=trial.number)[0]

    def record(self, trial: optuna.Trial, ret: JobReturn) -> None:
        self.returns.append(ret)
        state, values, error = outcome(ret)
        if state == TrialState.COMPLETE and len(values) != len(self.study.directions):
            state, error = TrialState.FAIL, ValueError(f"the job returned {len(values)} values for "
                                                       f"{len(self.study.directions)} directions")
        if self.storage.get_trial(trial._trial_id).state != TrialState.RUNNING:  # taken for lost meanwhile
            log.warning("trial %d was taken for lost (silent for 2 x heartbeat_interval) while it ran: its result is "
                        "dropped, and its retry counts", trial.number)
            return
        if state == TrialState.COMPLETE:
            self.study.tell(trial, values)
            self.done["complete"] += 1
            log.info("trial %d: %s with %s", trial.number, ", ".join(f"{v:.4f}" for v in values), trial.params)
        elif state == TrialState.PRUNED:
            self.study.tell(trial, state=state)
            self.done["pruned"] += 1
            log.info("trial %d pruned: %s", trial.number, error)
        else:
            trial.set_user_attr(ERROR_TAG, describe(error))
            self.study.tell(trial, state=state)
            self.done["failed"] += 1
            self.failed.append({**failure(ret, error), "trial": trial.number})

    def heartbeat(self) -> None:
        interval = self.sweeper.cfg.heartbeat_interval
        while not self.beat.wait(interval):
            for trial in list(self.in_flight.values()):
                try:
                    record_heartbeat(self.storage, trial._trial_id)
                except Exception as e:  # noqa: BLE001 - a storage hiccup must not end the beats for good
                    log.warning("trial %d: heartbeat not recorded (%s); trying again in %s s", trial.number,
                                describe(e), interval)

    def too_many_failures(self) -> bool:
        finished = sum(self.done.values())
        return finished > 0 and self.done["failed"] / finished > self.sweeper.cfg.max_failure_rate

    def run(self) -> None:
        threading.Thread(target=self.heartbeat, daemon=True).start()
        previous = signal.signal(signal.SIGTERM, _raise_interrupt)  # SLURM preemption: record, then stop
        try:
            while True:
                while len(self.in_flight) < self.sweeper.cfg.n_jobs and not self.too_many_failures():
                    trial = self.claim()
                    if trial is None:
                        break
                    if self.pool is None:  # in-process: run it now
                        self.in_flight[Future()] = trial
                        ret = self.launch(trial)
                        self.in_flight.clear()
                        self.record(trial, ret)
                        continue
                    self.in_flight[self.pool.submit(self.launch, trial)] = trial
                if not self.in_flight:
                    if self.too_many_failures() or not self.others_running():
                        break
                    time.sleep(min(5, self.sweeper.cfg.heartbeat_interval))  # wait for other workers' trials
                    continue
                finished, _ = wait(self.in_flight, return_when=FIRST_COMPLETED)
                for future in finished:
                    self.record(self.in_flight.pop(future), future.result())
        finally:
            self.beat.set()
            signal.signal(signal.SIGTERM, previous)
        if self.too_many_failures():
            log.error("stopped: failure rate %d/%d above max_failure_rate %s", self.done["failed"],
                      sum(self.done.values()), self.sweeper.cfg.max_failure_rate)

    def others_running(self) -> bool:
        """Trials other workers still run (or that will turn out stale and be retried)."""
        with self.lock.held():
            fail_stale_trials(self.study, self.storage, 2 * self.sweeper.cfg.heartbeat_interval)
        trials = self.study.get_trials(deepcopy=False)
        return any(t.state in (TrialState.RUNNING, TrialState.WAITING) for t in trials) or bool(not_yet_retried(trials))

    def abandon(self) -> None:
        """Interrupted: leave this process's trials FAIL without an error, so a rerun retries them."""
        for trial in self.in_flight.values():
            try:
                self.study.tell(trial, state=TrialState.FAIL)
            except Exception:  # noqa: BLE001 - already finished
                pass
        if self.pool is not None:
            self.pool.shutdown(wait=False, cancel_futures=True)

    def counts(self) -> dict[str, int]:
        """The study's trials by outcome; ``trials`` counts all but the interrupted (re-run) ones."""
        trials = self.study.get_trials(deepcopy=False)
        lost = sum(interrupted(t) and not given_up(t) for t in trials)
        return {"trials": len(trials) - lost, "complete": sum(t.state == TrialState.COMPLETE for t in trials),
                "pruned": sum(t.state == TrialState.PRUNED for t in trials),
                "failed": sum(t.state == TrialState.FAIL for t in trials) - lost, "interrupted": lost,
                "reused": self.parent.reused()}


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")
