"""``hydra/sweeper=optuna``: the settings Hydra's Optuna plugin users know, plus pruning and resume."""

from dataclasses import dataclass
from typing import Any, Dict, Optional

from hydra.core.config_store import ConfigStore


@dataclass
class OptunaSweeperConf:
    _target_: str = "hydra_plugins.imgexp_optuna_sweeper.optuna_sweeper.OptunaSweeper"
    _recursive_: bool = False  # sampler and pruner nodes reach the sweeper as configs (the pruner's is stored)
    sampler: Any = "tpe"  # tpe | random | cmaes | grid | nsgaii (study.SAMPLERS), or a node with a _target_
    # (hydra-optuna-sweeper's form: {_target_: optuna.samplers.TPESampler, seed: 1, n_startup_trials: 5})
    seed: Optional[int] = None  # the sampler's seed
    direction: Any = "maximize"  # minimize | maximize, or a list of them (one per optimized_metric)
    study_name: Optional[str] = None  # None: imgexp-<hash of the search space and fixed overrides>
    storage: Optional[str] = None  # any SQLAlchemy URL, or journal:///<shared path>.log (a journal file);
    # None: sqlite:///<cwd>/optuna/<study_name>.db
    n_trials: int = 20  # in the study as a whole: a rerun or another worker continues up to this
    n_jobs: int = 1  # trials in flight at once in this process (needs a process-based launcher)
    max_failure_rate: float = 1.0  # stop claiming trials once failed / finished exceeds this
    pruner: Any = "none"  # none | median | hyperband | successive_halving (imgexp.tracking.pruning.PRUNERS), or
    # a node with a _target_ ({_target_: optuna.pruners.MedianPruner, n_warmup_steps: 3})
    pruner_startup_trials: int = 5  # median: trials finished before any pruning
    pruner_warmup_steps: Optional[int] = None  # median: the first epoch a trial can be pruned at; None: a
    # third of the epochs, at least 2 (a trial is never judged on its first epoch alone)
    pruner_min_resource: int = 1  # hyperband / successive_halving: epochs before the first rung
    heartbeat_interval: int = 30  # seconds; a trial silent for 2x this is taken as dead and retried
    params: Optional[Dict[str, str]] = None  # search space in override syntax: {optimizer.lr: "tag(log, ...)"}
    custom_search_space: Optional[str] = None  # a function's dotted path, called as fn(config, trial) after the
    # trial is asked: the parameters it suggests (trial.suggest_float("optimizer.lr", ...)) become overrides


ConfigStore.instance().store(group="hydra/sweeper", name="optuna", node=OptunaSweeperConf, provider="imgexp")
