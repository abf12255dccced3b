"""docker/test/verify_stack.py: docker/test_stack.sh's checks of a finished Optuna sweep in the stack.

Run inside the imgexp image, on the stack's network, with the stack's PG* variables and
MLFLOW_TRACKING_URI (test_stack.sh does this):

    python verify_stack.py EXPERIMENT STUDY N_TRIALS

Checks that the MLflow server holds exactly one parent run (tag imgexp.role=sweep) and N_TRIALS FINISHED
child runs of it, each with its config.yaml served as an artifact; and that the study in PostgreSQL
(database optuna) has N_TRIALS COMPLETE trials and names that parent run. Exits 1 on any failed check.
"""
from __future__ import annotations

import sys

import optuna
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

PARENT_ATTR = "imgexp.parent_run_id"  # the study user attr that names the sweep's MLflow parent run


def main(experiment: str, study_name: str, n_trials: int) -> int:
    failures: list[str] = []

    def check(ok: bool, what: str) -> None:
        print(("ok    " if ok else "FAIL  ") + what)
        if not ok:
            failures.append(what)

    client = MlflowClient()
    exp = client.get_experiment_by_name(experiment)
    check(exp is not None, f"MLflow experiment {experiment!r} exists on {client.tracking_uri}")
    if exp is None:
        return 1
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    parents = [r for r in runs if r.data.tags.get("imgexp.role") == "sweep"]
    check(len(parents) == 1, f"one parent run (imgexp.role=sweep): {len(parents)}")
    parent_id = parents[0].info.run_id if parents else None
    children = [r for r in runs if parent_id and r.data.tags.get("mlflow.parentRunId") == parent_id]
    finished = [r for r in children if r.info.status == "FINISHED"]
    check(len(runs) == 1 + n_trials, f"{1 + n_trials} runs in the experiment: {len(runs)}")
    check(len(finished) == n_trials, f"{n_trials} FINISHED child runs: {len(finished)} of {len(children)}")
    served = [r for r in finished if "config.yaml" in {a.path for a in client.list_artifacts(r.info.run_id)}]
    check(len(served) == len(finished), f"config.yaml served from the artifact store: {len(served)} runs")
    for r in sorted(finished, key=lambda r: r.info.start_time):
        print(f"      child {r.info.run_id[:8]} trial {r.data.params.get('trial.number', '?')}"
              f" optimizer.lr={r.data.params.get('optimizer.lr')} val/acc_best={r.data.metrics.get('val/acc_best')}")

    study = optuna.load_study(study_name=study_name, storage="postgresql+psycopg:///optuna")
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    check(len(study.trials) == n_trials, f"{n_trials} trials in study {study_name!r}: {len(study.trials)}")
    check(len(complete) == n_trials, f"{n_trials} COMPLETE trials: {len(complete)}")
    check(study.user_attrs.get(PARENT_ATTR) == parent_id and parent_id is not None,
          f"the study names the parent run: {study.user_attrs.get(PARENT_ATTR)}")
    if complete:
        print(f"      best trial {study.best_trial.number}: {study.best_value:.4f} {study.best_params}")
    print(f"verify: {len(failures)} check(s) failed" if failures else "verify: all checks passed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
