"""An Optuna sweeper for Hydra on Optuna >= 4: ask-and-tell over any Hydra launcher. This module sets a study up
from the sweep's settings; the rest is in three parts:

- :mod:`.trial_loop`: trials are claimed one at a time under a :class:`StudyLock`, so any number of workers
  (processes, machines, SLURM jobs) started with the same study and storage together run exactly ``n_trials``,
  and none waits for a batch. Each job gets the trial's storage, study and id (``trial.*`` overrides) and
  reports its metric per epoch; the study's pruner, stored in the study, stops it early (PRUNED).
- :mod:`.retries`: rerunning the same command continues the study up to ``n_trials``; a trial whose worker
  died (interrupted, or silent past the heartbeat grace period) is run again with the same parameters.
- :mod:`.parent`: one MLflow parent run per study (reopened on resume) gets the summary, the best parameters
  and Optuna's plots of the study.
"""
from __future__ import annotations

import hashlib
import logging
import math
import warnings
from pathlib import Path
from typing import Any, List

import optuna
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.plugins import Plugins
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf

from hydra_plugins.imgexp_optuna_sweeper.config import OptunaSweeperConf
from hydra_plugins.imgexp_optuna_sweeper.parent import close_parent, open_parent
from hydra_plugins.imgexp_optuna_sweeper.search_space import as_override, grid, quote, split
from hydra_plugins.imgexp_optuna_sweeper.study_lock import StudyLock
from hydra_plugins.imgexp_optuna_sweeper.trial_loop import TrialLoop
from imgexp import redact
from imgexp.config import as_list
from imgexp.sweep_nodes import SweepNodes
from imgexp.sweep_overrides import check_composes, hide_internal_overrides, light_analysis
from imgexp.tracking.pruning import PRUNERS, build_pruner
from imgexp.tracking.store import ERROR_TAG, check_database
from imgexp.tracking.study_storage import absolute, open_storage
from imgexp.tracking.trial import PRUNER_ATTR

log = logging.getLogger(__name__)


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



class StudySweeper(Sweeper):
    """The sweep itself; :class:`~hydra_plugins.imgexp_optuna_sweeper.optuna_sweeper.OptunaSweeper` hands it over."""

    def __init__(self, **settings: Any) -> None:
        self.cfg = OmegaConf.structured(OptunaSweeperConf(**settings))

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config, self.hydra_context = config, hydra_context
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config)

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

    def sweep(self, arguments: List[str]) -> Any:
        c = self.cfg
        redact.install()  # Hydra has configured the sweep's logging: no URI password in it
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)  # fail_stale_trials
        warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")
        nodes = SweepNodes.meet(self.config, arguments)  # trials over several nodes: one node runs the study
        if nodes is not None and not nodes.leads:
            return nodes.follow(self.launcher)
        params = [f"{k}={v}" for k, v in (c.params or {}).items()] + list(arguments)
        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        space, fixed = split(parser.parse_overrides(params))
        directions = self._check(space)
        choices = {k: [as_override(k, c) for c in d.choices] for k, d in space.items()
                   if isinstance(d, optuna.distributions.CategoricalDistribution)}
        check_composes(self.hydra_context, self.config, fixed + [c[0] for c in choices.values()],
                       [c for values in choices.values() for c in values])
        name = c.study_name or "imgexp-" + hashlib.sha1("\n".join(sorted(params)).encode()).hexdigest()[:8]
        url = absolute(c.storage or f"sqlite:///{Path.cwd() / 'optuna' / name}.db")  # jobs may run elsewhere
        n_trials = c.n_trials
        if c.sampler == "grid":
            n_trials = min(n_trials, math.prod(len(v) for v in grid(space).values()))
        check_database(url, "hydra.sweeper.storage")  # an unreachable database: one line within seconds
        lock = StudyLock(url, name)
        with lock.held():  # workers starting together: one creates the tables, the study and the parent run
            storage = open_storage(url, c.heartbeat_interval)
            study = optuna.create_study(study_name=name, storage=storage, sampler=self._sampler(space),
                                        pruner=build_pruner(self._pruner_spec()), directions=directions,
                                        load_if_exists=True)
            if [d.name.lower() for d in study.directions] != directions:
                raise ValueError(f"hydra.sweeper.direction: study {name!r} was created with "
                                 f"{[d.name.lower() for d in study.directions]}, not {directions}")
            study.set_user_attr(PRUNER_ATTR, self._pruner_spec())
            study.set_metric_names([str(m) for m in as_list(self.config.optimized_metric)])  # optuna-dashboard's
            parent = open_parent(self.config, study, arguments, redact.mask(url))
        sweep_dir = Path(self.config.hydra.sweep.dir)
        log.info("study %s in %s: %d trials in all, %d done; sweep dir %s", name, redact.mask(url), n_trials,
                 len(study.trials), sweep_dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        redact.save_yaml(self.config, sweep_dir / "multirun.yaml")
        light = light_analysis(self.config, fixed + [f"{k}=" for k in space])
        parent.light = bool(light)
        job_overrides = fixed + light + parent.child_override() + [f"trial.storage={quote(url)}",
                                                                   f"trial.study={quote(name)}"]
        hide_internal_overrides()
        loop = TrialLoop(self, study, storage, lock, parent, space, job_overrides, n_trials, nodes)
        try:
            loop.run()
        except BaseException:
            loop.abandon()
            parent.close(True, {}, {ERROR_TAG: "sweep interrupted"}, [])
            if nodes is not None:
                nodes.close(interrupted=True)
            raise
        if nodes is not None:
            nodes.close()
        close_parent(parent, self.config, study, loop.counts(), loop.failed, sweep_dir)
        return loop.returns


def warmup_steps(epochs: int) -> int:
    """The median pruner's default warm-up, the first epoch a trial can be pruned at: a third of the
    epochs, and never the first (one epoch says little of a learning rate)."""
    return max(2, epochs // 3)

