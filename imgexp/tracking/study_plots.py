"""Tracking, middle layer (nothing of tracking/): Optuna's own figures of a study (``optuna.visualization.matplotlib``), for its sweep's parent run.

The compare report finds them on a study's parent run as ``optuna/*.png``. A plot that cannot be drawn is
left out with one log line; drawing never fails the sweep.
"""
from __future__ import annotations

import logging
import warnings
from typing import Any, Callable, Optional

import optuna
from optuna.trial import FrozenTrial, TrialState

from imgexp.analysis.pyplot import plt
from imgexp.errors import describe

log = logging.getLogger(__name__)
FOLDER = "optuna"  # artifact folder on the parent run
MIN_COMPLETE = 2  # completed trials a plot needs
NEEDS_PARAMS = ("param_importances", "parallel_coordinate")


def study_plots(study: optuna.Study, metrics: list[str]) -> dict[str, Any]:
    """{artifact path: matplotlib Figure}: ``optuna/optimization_history.png``, ``optuna/param_importances.png``
    (fANOVA, seed 0: the same trials give the same plot), ``optuna/parallel_coordinate.png`` and, with several
    objectives, ``optuna/pareto_front.png``. ``metrics`` names the objectives (the sweep's ``optimized_metric``).

    With several objectives, history, importances and parallel coordinates show the first one (the first of
    ``metrics``); the Pareto front shows them all (the first three when there are more). The caller closes
    the figures."""
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    figures = {}
    for name, draw in _drawings(study, metrics).items():
        reason = _cannot_draw(name, complete)
        if reason:
            log.info("optuna plot %s left out: %s", name, reason)
            continue
        figure = _draw(name, draw)
        if figure is not None:
            figures[f"{FOLDER}/{name}.png"] = figure
    return figures


def _drawings(study: optuna.Study, metrics: list[str]) -> dict[str, Callable[[], Any]]:
    """The plots that apply to the study, by file name, each as a function that draws it (its Axes)."""
    from optuna.visualization import matplotlib as vis

    first: dict[str, Any] = {"target": (lambda t: t.values[0]) if len(metrics) > 1 else None, "target_name": metrics[0]}
    evaluator = optuna.importance.FanovaImportanceEvaluator(seed=0)
    drawings = {
        "optimization_history": lambda: vis.plot_optimization_history(study, **first),
        "param_importances": lambda: vis.plot_param_importances(study, evaluator=evaluator, **first),
        "parallel_coordinate": lambda: vis.plot_parallel_coordinate(study, **first),
    }
    if len(metrics) > 1:
        targets = None if len(metrics) <= 3 else lambda t: t.values[:3]
        drawings["pareto_front"] = lambda: vis.plot_pareto_front(study, targets=targets, target_names=metrics[:3])
    return drawings


def _cannot_draw(name: str, complete: list[FrozenTrial]) -> Optional[str]:
    """Why the plot ``name`` says nothing for these completed trials; None when it can be drawn."""
    if len(complete) < MIN_COMPLETE:
        return f"{len(complete)} completed trials, it needs {MIN_COMPLETE}"
    if name in NEEDS_PARAMS and not any(t.params for t in complete):
        return "the trials have no parameters"
    return None


def _draw(name: str, draw: Callable[[], Any]) -> Optional[Any]:
    """The figure ``draw`` makes, or None (logged) if it fails. Optuna's style sheet and its warnings
    (experimental API, degenerate axes) stay inside."""
    before = set(plt.get_fignums())
    with warnings.catch_warnings(), plt.rc_context():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        warnings.simplefilter("ignore", UserWarning)
        try:
            return draw().figure
        except Exception as error:  # noqa: BLE001 - e.g. fANOVA on trials whose values are all equal
            log.warning("optuna plot %s left out: %s", name, describe(error))
            for number in set(plt.get_fignums()) - before:
                plt.close(number)
            return None
