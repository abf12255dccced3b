"""A job's link to its Optuna trial: report the optimized metric after each epoch, and stop the job
when the study's pruner says so. The sweeper stores the pruner's settings in the study, so a job in
any process (or on any SLURM node) rebuilds the same pruner from the storage alone."""
from __future__ import annotations

from pathlib import Path

import optuna
from omegaconf import DictConfig

PRUNER_ATTR = "imgexp.pruner"  # study user attr: {"name": "median", "n_startup_trials": 5, ...}
CHECKPOINT_ATTR = "imgexp.checkpoint_dir"  # trial user attr: where the job writes last.pt
PRUNERS = ("none", "median", "hyperband", "successive_halving")


class TrialPruned(optuna.TrialPruned):
    """Raised from the epoch callback; the MLflow run is kept and tagged pruned."""

    run_status = "pruned"


def build_pruner(spec: dict) -> optuna.pruners.BasePruner:
    """``{"name": "median", "n_startup_trials": 5, "n_warmup_steps": 1}`` -> an Optuna pruner."""
    name = spec.get("name", "none")
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=spec.get("n_startup_trials", 5),
                                           n_warmup_steps=spec.get("n_warmup_steps", 0))
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=spec.get("min_resource", 1),
                                              max_resource=spec.get("max_resource", "auto"))
    if name == "successive_halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=spec.get("min_resource", "auto"))
    if name == "none":
        return optuna.pruners.NopPruner()
    raise ValueError(f"pruner must be one of {', '.join(PRUNERS)}, got {name!r}")


def join_trial(trial: DictConfig, metric: str, checkpoint_dir: Path):
    """Record on the job's trial where its checkpoints go (a retry of an interrupted trial resumes from
    them), and return an ``on_epoch`` hook reporting ``metric`` to the trial: ``report(epoch, metrics,
    may_prune=True)``; replayed epochs of a resumed run are reported with ``may_prune=False``. None
    outside an Optuna sweep, or when the study does not prune."""
    if trial.study is None:
        return None
    study = optuna.load_study(study_name=trial.study, storage=trial.storage)
    live = optuna.trial.Trial(study, trial.id)
    live.set_user_attr(CHECKPOINT_ATTR, str(checkpoint_dir.resolve()))
    study.pruner = build_pruner(study.user_attrs.get(PRUNER_ATTR, {}))
    if len(study.directions) > 1 or isinstance(study.pruner, optuna.pruners.NopPruner):
        return None  # Optuna prunes single-objective studies only

    def report(epoch: int, metrics: dict[str, float], may_prune: bool = True) -> None:
        if metric not in metrics:
            return
        live.report(metrics[metric], step=epoch)
        if may_prune and live.should_prune():
            raise TrialPruned(f"trial {trial.number} pruned at epoch {epoch} ({metric} {metrics[metric]:.4f})")

    return report
