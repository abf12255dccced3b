"""Tracking, middle layer (uses pruning.py and study_storage.py): a job's link to its Optuna trial: report the optimized metric after each epoch, and stop the job
when the study's pruner says so. The sweeper stores the pruner's settings in the study, so a job in
any process (or on any SLURM node) rebuilds the same pruner from the storage alone."""
from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

PRUNER_ATTR = "imgexp.pruner"  # study user attr: {"name": "median", "n_startup_trials": 5, ...}
CHECKPOINT_ATTR = "imgexp.checkpoint_dir"  # trial user attr: where the job writes last.pt
RUN_ATTR = "mlflow_run_id"  # trial user attr: the job's MLflow run (optuna-dashboard shows user attrs)


def join_trial(trial: DictConfig, metric: str, checkpoint_dir: Path, run_id: str | None = None):
    """Record on the job's trial its MLflow run and where its checkpoints go (a retry of an interrupted trial
    resumes from them), and return an ``on_epoch`` hook reporting ``metric`` to the trial: ``report(epoch, metrics,
    may_prune=True)``; replayed epochs of a resumed run are reported with ``may_prune=False``. None
    outside an Optuna sweep, or when the study does not prune."""
    if trial.study is None:
        return None
    import optuna  # only in an Optuna sweep

    from imgexp.tracking.pruning import TrialPruned, build_pruner
    from imgexp.tracking.study_storage import open_storage

    study = optuna.load_study(study_name=trial.study, storage=open_storage(trial.storage))
    live = optuna.trial.Trial(study, trial.id)
    live.set_user_attr(CHECKPOINT_ATTR, str(checkpoint_dir.resolve()))
    if run_id:
        live.set_user_attr(RUN_ATTR, run_id)
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
