"""A study's MLflow parent run: one per study, named in the study's user attrs so that every worker and every
rerun reopens the same one; closed with the study's summary, its best parameters (or Pareto front) and
Optuna's plots of the study (:mod:`imgexp.tracking.study_plots`, also written to the sweep dir's ``optuna/``)."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import optuna
from omegaconf import DictConfig
from optuna.trial import TrialState

from imgexp.config import as_list
from imgexp.tracking.study_plots import study_plots
from imgexp.tracking.store import set_tags
from imgexp.tracking.sweep import ParentRun, finish

log = logging.getLogger(__name__)
PARENT_ATTR = "imgexp.parent_run_id"  # study user attr


def open_parent(config: DictConfig, study: optuna.Study, arguments: list[str], storage: str) -> ParentRun:
    """The study's parent run, created by the first worker (call it under the study's lock), reopened by the
    others and by reruns; tagged with the study's name and its storage (``storage``: password masked)."""
    parent = ParentRun(config.tracking, study.study_name, "optuna", arguments, study.user_attrs.get(PARENT_ATTR))
    if parent.run_id and PARENT_ATTR not in study.user_attrs:
        study.set_user_attr(PARENT_ATTR, parent.run_id)
    if parent.run_id:
        set_tags(parent.client, parent.run_id, {"imgexp.study": study.study_name, "imgexp.storage": storage})
    return parent


def close_parent(parent: ParentRun, config: DictConfig, study: optuna.Study, counts: dict[str, int],
                 failed: list[dict], sweep_dir: Path) -> None:
    """End the sweep (:func:`~imgexp.tracking.sweep.finish`) with the study's results and plots."""
    metrics = as_list(config.optimized_metric)
    finish(counts, failed, sweep_dir, parent,
           (metrics[0], study.directions[0] == optuna.study.StudyDirection.MAXIMIZE), results(study),
           study_plots(study, metrics))


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

