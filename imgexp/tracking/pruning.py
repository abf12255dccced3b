"""Tracking, middle layer (nothing of tracking/): Optuna's pruners by name, and the exception a pruned job ends with; imported only in an Optuna sweep."""
from __future__ import annotations

import optuna


class TrialPruned(optuna.TrialPruned):
    """Raised from the epoch callback; the MLflow run is kept and tagged pruned."""

    run_status = "pruned"


PRUNERS = {  # hydra.sweeper.pruner -> the pruner, from the settings the sweeper stores in the study
    "none": lambda spec: optuna.pruners.NopPruner(),
    "median": lambda spec: optuna.pruners.MedianPruner(n_startup_trials=spec.get("n_startup_trials", 5),
                                                       n_warmup_steps=spec.get("n_warmup_steps", 0)),
    "hyperband": lambda spec: optuna.pruners.HyperbandPruner(min_resource=spec.get("min_resource", 1),
                                                             max_resource=spec.get("max_resource", "auto")),
    "successive_halving": lambda spec: optuna.pruners.SuccessiveHalvingPruner(
        min_resource=spec.get("min_resource", "auto")),
}


def build_pruner(spec: dict) -> optuna.pruners.BasePruner:
    """``{"name": "median", "n_startup_trials": 5, "n_warmup_steps": 1}`` -> an Optuna pruner; ``name`` may be
    a node with a ``_target_`` (hydra-optuna-sweeper's form), instantiated by Hydra."""
    name = spec.get("name", "none")
    if isinstance(name, dict):
        from hydra.utils import instantiate

        return instantiate(name)
    if name not in PRUNERS:
        raise ValueError(f"pruner must be one of {', '.join(PRUNERS)}, got {name!r}")
    return PRUNERS[name](spec)
