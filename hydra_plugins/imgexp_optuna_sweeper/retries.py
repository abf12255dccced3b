"""Trials whose worker died or was stopped (interrupted: FAIL without an error of their own) are run again
with the same parameters, from their checkpoint when they left one, up to :data:`MAX_ATTEMPTS` times in all."""
from __future__ import annotations

import optuna
from optuna.trial import TrialState

from imgexp.tracking.store import ERROR_TAG

RETRY_ATTR = "imgexp.retry_of"  # on a trial re-running an interrupted one
ATTEMPT_ATTR = "imgexp.attempt"  # 2 for the first retry of a trial's parameters, 3 for the next...
MAX_ATTEMPTS = 3  # an interrupted trial's parameters are tried this often in all, then counted failed


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

