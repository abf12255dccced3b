"""An Optuna sweeper for Hydra on Optuna >= 4: ask-and-tell over any Hydra launcher.

- Trials are claimed one at a time under a :class:`StudyLock`, so any number of workers (processes,
  machines, SLURM jobs) started with the same study and storage together run exactly ``n_trials``, and
  none waits for a batch: a worker claims its next trial as soon as one of its own finishes.
- Each job gets the trial's storage, study and id (``trial.*`` overrides) and reports its metric per
  epoch; the study's pruner, stored in the study, stops it early (PRUNED).
- Rerunning the same command continues the study up to ``n_trials``. A trial whose worker died
  (interrupted, or silent past the heartbeat grace period) stays in the study as FAIL without an
  error and is run again with the same parameters.
- One MLflow parent run per study (reopened on resume) gets the summary, the best parameters and Optuna's
  plots of the study (:mod:`imgexp.tracking.study_plots`, also written to the sweep dir's ``optuna/``).
"""
from __future__ import annotations

import hashlib
import logging
import math
import signal
import threading
import time
import warnings
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any, Callable, List, Optional

import optuna
from hydra._internal.core_plugins.basic_launcher import BasicLauncher
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.plugins import Plugins
from hydra.core.utils import JobReturn
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf
from optuna.trial import TrialState

from hydra_plugins.imgexp_optuna_sweeper.config import OptunaSweeperConf
from hydra_plugins.imgexp_optuna_sweeper.search_space import as_override, grid, quote, split
from hydra_plugins.imgexp_optuna_sweeper.study_lock import StudyLock
from imgexp.config import as_list
from imgexp.errors import describe
from imgexp import redact
from imgexp.tracking.mlflow import ERROR_TAG, check_database
from imgexp.tracking.sweep import (ParentRun, check_composes, failure, finish, hide_internal_overrides, job_error,
                                  job_name, light_analysis)
from imgexp.tracking.pruning import PRUNERS, build_pruner
from imgexp.tracking.study_plots import study_plots
from imgexp.tracking.trial import CHECKPOINT_ATTR, PRUNER_ATTR

log = logging.getLogger(__name__)
RETRY_ATTR = "imgexp.retry_of"  # on a trial re-running an interrupted one
ATTEMPT_ATTR = "imgexp.attempt"  # 2 for the first retry of a trial's parameters, 3 for the next...
MAX_ATTEMPTS = 3  # an interrupted trial's parameters are tried this often in all, then counted failed
PARENT_ATTR = "imgexp.parent_run_id"  # study user attr


class AskTellGridSampler(optuna.samplers.GridSampler):
    """Optuna's GridSampler without its ``study.stop()`` once the grid is done, which raises outside
    ``study.optimize``; the sweeper asks for no more trials than the grid has."""

    def after_trial(self, study, trial, state, values) -> None:
        pass


SAMPLERS = {"tpe": optuna.samplers.TPESampler, "random": optuna.samplers.RandomSampler, "grid": AskTellGridSampler,
            "cmaes": optuna.samplers.CmaEsSampler, "nsgaii": optuna.samplers.NSGAIISampler}


def targeted(node: Any) -> bool:
    """A config node with a ``_target_`` (a class for Hydra to instantiate), as hydra-optuna-sweeper takes."""
    return isinstance(node, (dict, DictConfig)) and "_target_" in node


def custom_space(path: Optional[str]) -> Optional[Callable]:
    """hydra-optuna-sweeper's ``custom_search_space``: the function ``fn(config, trial)`` at a dotted path."""
    if not path:
        return None
    from hydra.utils import get_method

    return get_method(path)


def interrupted(trial: optuna.trial.FrozenTrial) -> bool:
    """Failed without an error of its own (user attr ``imgexp.error``): its worker died or was stopped."""
    return trial.state == TrialState.FAIL and ERROR_TAG not in trial.user_attrs


def given_up(trial: optuna.trial.FrozenTrial) -> bool:
    """Interrupted on its last allowed attempt (:data:`MAX_ATTEMPTS`): not run again, counted failed."""
    return interrupted(trial) and trial.user_attrs.get(ATTEMPT_ATTR, 1) >= MAX_ATTEMPTS


def not_yet_retried(trials: list[optuna.trial.FrozenTrial]) -> list[optuna.trial.FrozenTrial]:
    """The interrupted trials that no trial re-runs yet, and that may be tried again."""
    retried = {t.user_attrs.get(RETRY_ATTR) for t in trials}
    return [t for t in trials if interrupted(t) and not given_up(t) and t.number not in retried]


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


class StudySweeper(Sweeper):
    """The sweep itself; :class:`~hydra_plugins.imgexp_optuna_sweeper.optuna_sweeper.OptunaSweeper` hands it over."""

    def __init__(self, **settings: Any) -> None:
        self.cfg = OmegaConf.structured(OptunaSweeperConf(**settings))

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config, self.hydra_context = config, hydra_context
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config)

    # ------------------------------------------------------------------ set-up
    def _check(self, space: dict) -> list[str]:
        c = self.cfg
        directions = [c.direction] if isinstance(c.direction, str) else list(c.direction)
        checks = [
            (targeted(c.sampler) or (isinstance(c.sampler, str) and c.sampler in SAMPLERS), "sampler",
             f"must be one of {', '.join(SAMPLERS)} or a node with a _target_, got {c.sampler!r}"),
            (targeted(c.pruner) or (isinstance(c.pruner, str) and c.pruner in PRUNERS), "pruner",
             f"must be one of {', '.join(PRUNERS)} or a node with a _target_, got {c.pruner!r}"),
            (all(d in ("minimize", "maximize") for d in directions), "direction",
             f"must be minimize or maximize (or a list of them), got {c.direction!r}"),
            (c.n_trials >= 1 and c.n_jobs >= 1, "n_trials", "n_trials and n_jobs must be >= 1"),
            (bool(space) or bool(c.custom_search_space), "params",
             "no search space: give one, e.g. 'optimizer.lr=tag(log,interval(1e-5,1e-1))'"),
        ]
        for ok, key, reason in checks:
            if not ok:
                raise ValueError(f"hydra.sweeper.{key}: {reason}")
        metrics = as_list(self.config.optimized_metric)
        if len(metrics) != len(directions):
            raise ValueError(f"hydra.sweeper.direction: {len(directions)} directions {directions} but optimized_metric "
                             f"names {len(metrics)} metrics {metrics}: give one direction per metric, e.g. "
                             f"optimized_metric=[val/acc_best,val/loss]")
        return directions

    def _sampler(self, space: dict) -> optuna.samplers.BaseSampler:
        c = self.cfg
        if targeted(c.sampler):
            from hydra.utils import instantiate

            return instantiate(c.sampler)
        if c.sampler == "grid":
            return AskTellGridSampler(grid(space), seed=c.seed)
        return SAMPLERS[c.sampler](seed=c.seed)

    def _pruner_spec(self) -> dict:
        c = self.cfg
        warmup = c.pruner_warmup_steps if c.pruner_warmup_steps is not None else warmup_steps(self.config.epochs)
        name = OmegaConf.to_container(c.pruner) if targeted(c.pruner) else c.pruner
        return {"name": name, "n_startup_trials": c.pruner_startup_trials,
                "n_warmup_steps": warmup, "min_resource": c.pruner_min_resource}

    # ------------------------------------------------------------------ the sweep
    def sweep(self, arguments: List[str]) -> Any:
        c = self.cfg
        redact.install()  # Hydra has configured the sweep's logging: no URI password in it
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)  # fail_stale_trials
        warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")
        params = [f"{k}={v}" for k, v in (c.params or {}).items()] + list(arguments)
        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        space, fixed = split(parser.parse_overrides(params))
        directions = self._check(space)
        choices = {k: [as_override(k, c) for c in d.choices] for k, d in space.items()
                   if isinstance(d, optuna.distributions.CategoricalDistribution)}
        check_composes(self.hydra_context, self.config, fixed + [c[0] for c in choices.values()],
                       [c for values in choices.values() for c in values])
        name = c.study_name or "imgexp-" + hashlib.sha1("\n".join(sorted(params)).encode()).hexdigest()[:8]
        url = c.storage or f"sqlite:///{Path.cwd() / 'optuna' / name}.db"
        if url.startswith("sqlite:///") and not url.startswith("sqlite:////"):
            url = f"sqlite:///{Path(url[len('sqlite:///'):]).resolve()}"  # jobs may run elsewhere
        if url.startswith("sqlite:///"):
            Path(url[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
        n_trials = c.n_trials
        if c.sampler == "grid":
            n_trials = min(n_trials, math.prod(len(v) for v in grid(space).values()))
        check_database(url, "hydra.sweeper.storage")  # an unreachable database: one line within seconds
        lock = StudyLock(url, name)
        with lock.held():  # workers starting together: one creates the tables, the study and the parent run
            storage = optuna.storages.RDBStorage(
                url, heartbeat_interval=c.heartbeat_interval, grace_period=2 * c.heartbeat_interval,
                engine_kwargs={"connect_args": {"timeout": 60}} if url.startswith("sqlite") else None)
            study = optuna.create_study(study_name=name, storage=storage, sampler=self._sampler(space),
                                        pruner=build_pruner(self._pruner_spec()), directions=directions,
                                        load_if_exists=True)
            if [d.name.lower() for d in study.directions] != directions:
                raise ValueError(f"hydra.sweeper.direction: study {name!r} was created with "
                                 f"{[d.name.lower() for d in study.directions]}, not {directions}")
            study.set_user_attr(PRUNER_ATTR, self._pruner_spec())
            sweep_dir = Path(self.config.hydra.sweep.dir)
            parent = ParentRun(self.config.tracking, name, "optuna", arguments, study.user_attrs.get(PARENT_ATTR))
            if parent.run_id and PARENT_ATTR not in study.user_attrs:
                study.set_user_attr(PARENT_ATTR, parent.run_id)
        safe_url = redact.mask(url)
        log.info("study %s in %s: %d trials in all, %d done; sweep dir %s", name, safe_url, n_trials,
                 len(study.trials), sweep_dir)
        if parent.run_id:
            parent.client.set_tag(parent.run_id, "imgexp.study", name)
            parent.client.set_tag(parent.run_id, "imgexp.storage", safe_url)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        redact.save_yaml(self.config, sweep_dir / "multirun.yaml")
        light = light_analysis(self.config, fixed + [f"{k}=" for k in space])
        parent.light = bool(light)
        job_overrides = fixed + light + parent.child_override() + [f"trial.storage={quote(url)}",
                                                                   f"trial.study={quote(name)}"]
        hide_internal_overrides()
        run = _Run(self, study, storage, lock, parent, space, job_overrides, n_trials)
        try:
            run.loop()
        except BaseException:
            run.abandon()
            parent.close(True, {}, {ERROR_TAG: "sweep interrupted"}, [])
            raise
        metrics = as_list(self.config.optimized_metric)
        finish(run.counts(), run.failed, sweep_dir, parent,
               (metrics[0], study.directions[0] == optuna.study.StudyDirection.MAXIMIZE), results(study),
               study_plots(study, metrics))
        return run.returns


def warmup_steps(epochs: int) -> int:
    """The median pruner's default warm-up, the first epoch a trial can be pruned at: a third of the
    epochs, and never the first (one epoch says little of a learning rate)."""
    return max(2, epochs // 3)


def results(study: optuna.Study) -> dict:
    """Best value and parameters (single objective) or the Pareto front (several)."""
    out: dict[str, Any] = {"study_name": study.study_name}
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    if not complete:
        return out
    if len(study.directions) == 1:
        best = study.best_trial
        out |= {"best_trial": best.number, "best_value": best.value, "best_params": best.params}
        log.info("best trial %d: value %.4f, params %s", best.number, best.value, best.params)
    else:
        out["pareto_front"] = [{"number": t.number, "values": t.values, "params": t.params} for t in study.best_trials]
        log.info("Pareto front: trials %s", [t.number for t in study.best_trials])
    return out


class _Run:
    """One process's share of a study: claim, launch, record, until the study has ``n_trials``."""

    def __init__(self, sweeper: StudySweeper, study: optuna.Study, storage, lock: StudyLock, parent: ParentRun,
                 space: dict, overrides: list[str], n_trials: int) -> None:
        self.sweeper, self.study, self.storage, self.lock, self.parent = sweeper, study, storage, lock, parent
        self.space, self.overrides, self.n_trials = space, overrides, n_trials
        self.extend = custom_space(sweeper.cfg.custom_search_space)
        parallel = sweeper.cfg.n_jobs > 1 and not isinstance(sweeper.launcher, BasicLauncher)
        if sweeper.cfg.n_jobs > 1 and not parallel:
            log.warning("n_jobs=%d with the in-process launcher runs one trial at a time: use "
                        "hydra/launcher=joblib, or start several workers", sweeper.cfg.n_jobs)
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
            optuna.storages.fail_stale_trials(self.study)
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
            self.storage.record_heartbeat(trial._trial_id)
            return trial

    def launch(self, trial: optuna.Trial) -> JobReturn:
        params = [as_override(k, v) for k, v in trial.params.items()]
        shown = [as_override(k, float(f"{v:.4g}") if isinstance(v, float) else v) for k, v in trial.params.items()]
        overrides = params + self.overrides + [f"trial.id={trial._trial_id}", f"trial.number={trial.number}"] + \
            job_name([f"trial {trial.number}:", *shown])  # the run's name: 4 significant digits
        interrupted_dir = trial.user_attrs.get(CHECKPOINT_ATTR)  # a retry: continue from the lost trial's state
        if interrupted_dir and (Path(interrupted_dir) / "last.pt").exists():
            overrides.append(f"resume={quote(interrupted_dir)}")
        return self.sweeper.launcher.launch([overrides], initial_job_idx=trial.number)[0]

    def record(self, trial: optuna.Trial, ret: JobReturn) -> None:
        self.returns.append(ret)
        state, values, error = outcome(ret)
        if state == TrialState.COMPLETE and len(values) != len(self.study.directions):
            state, error = TrialState.FAIL, ValueError(f"the job returned {len(values)} values for "
                                                       f"{len(self.study.directions)} directions")
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
                self.storage.record_heartbeat(trial._trial_id)

    def too_many_failures(self) -> bool:
        finished = sum(self.done.values())
        return finished > 0 and self.done["failed"] / finished > self.sweeper.cfg.max_failure_rate

    def loop(self) -> None:
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
        optuna.storages.fail_stale_trials(self.study)
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
