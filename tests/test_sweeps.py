"""Sweeps: grid multiruns and the Optuna sweeper, read back from MLflow and from the Optuna storage."""
from __future__ import annotations

import glob
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import Future
from pathlib import Path
from types import SimpleNamespace

import optuna
import pytest
from mlflow import MlflowClient
from optuna.trial import TrialState

from conftest import run_cli
from hydra.core.utils import JobReturn, JobStatus
from hydra_plugins.imgexp_optuna_sweeper.trial_loop import TrialLoop, outcome
from hydra_plugins.imgexp_optuna_sweeper.study_lock import StudyLock
from imgexp.tracking.sweep import failure, save_figures
from imgexp.tracking.study_plots import study_plots
from imgexp.tracking.pruning import TrialPruned

FAST = ["analysis=none", "progress=false", "data.subset=200"]
OPTUNA = ["hydra/sweeper=optuna", "hydra.sweeper.heartbeat_interval=1"]


def sweep_runs(workdir: Path, experiment: str):
    """(parent runs, child runs) of an experiment in the working directory's MLflow store."""
    client = MlflowClient(f"sqlite:///{workdir}/mlflow.db")
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    parents = [r for r in runs if r.data.tags.get("imgexp.role") == "sweep"]
    children = [r for r in runs if r not in parents]
    return parents, children


def assert_children_of(parent, children, n: int):
    assert len(children) == n
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parent.info.run_id}
    assert {r.data.tags["imgexp.sweep_id"] for r in children} == {parent.data.tags["imgexp.sweep_id"]}


# ------------------------------------------------------------------ grid
@pytest.mark.slow
def test_grid_sweep_has_one_parent_run_for_all_jobs(workdir):
    proc = run_cli("-m", "epochs=1,2", "batch=32,128", *FAST, "tracking.experiment=grid", cwd=workdir)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (parent,), children = sweep_runs(workdir, "grid")
    assert_children_of(parent, children, 4)
    assert all(r.info.status == "FINISHED" for r in children)
    combos = sorted((int(r.data.params["epochs"]), int(r.data.params["batch"])) for r in children)
    assert combos == [(e, b) for e in (1, 2) for b in (32, 128)]
    assert all("tracking.parent_run_id" not in r.data.tags["imgexp.overrides"] for r in children)
    assert parent.info.status == "FINISHED" and parent.data.tags["imgexp.sweeper"] == "grid"
    assert parent.data.metrics["sweep/trained"] == 4 and parent.data.metrics["sweep/failed"] == 0
    assert parent.data.metrics["sweep/reused"] == 0
    assert "batch=32,128" in parent.data.tags["imgexp.overrides"]
    assert parent.data.tags["mlflow.runName"].startswith("grid epochs=1,2 batch=32,128")
    assert {r.data.tags["mlflow.runName"] for r in children} == {
        f"small_cnn epochs={e} batch={b}" for e in (1, 2) for b in (32, 128)}, "named by the swept values"
    launches = [line.split(" : ", 1)[1] for line in proc.stdout.splitlines() if "\t#" in line]
    assert launches[0] == "epochs=1 batch=32 analysis=none progress=False data.subset=200 tracking.experiment=grid"
    assert len(launches) == 4 and not any("tracking." in l.replace("tracking.experiment", "") for l in launches)


@pytest.mark.slow
def test_grid_sweep_records_a_failing_job_and_goes_on(workdir):
    proc = run_cli("-m", "epochs=1", "optimizer.lr=1e12,0.001", *FAST, "tracking.experiment=fail", cwd=workdir)
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("imgexp: error: 1 of 2 jobs failed") and "optimizer.lr=1000000000000.0" in last
    assert "training loss is nan" in last and "Traceback" not in proc.stderr
    (parent,), children = sweep_runs(workdir, "fail")
    assert_children_of(parent, children, 2)
    by_lr = {float(r.data.params["optimizer.lr"]): r for r in children}
    assert by_lr[1e12].info.status == "FAILED" and "training loss is nan" in by_lr[1e12].data.tags["imgexp.error"]
    assert by_lr[0.001].info.status == "FINISHED" and "test/acc" in by_lr[0.001].data.metrics
    assert parent.info.status == "FAILED" and parent.data.metrics["sweep/failed"] == 1
    (summary_file,) = glob.glob(str(workdir / "multirun/*/*/sweep_summary.json"))
    summary = json.loads(Path(summary_file).read_text())
    assert summary["trained"] == 1 and summary["failed"][0]["overrides"][1] == "optimizer.lr=1000000000000.0"


@pytest.mark.slow
def test_sweeps_never_train_a_finished_config_twice(workdir, monkeypatch):
    """Extending a sweep trains only the new jobs; reused ones are recorded in the new sweep (params,
    metric histories, a link to the trained run), counted once by compare; reuse=false trains anyway; an
    Optuna trial whose config finished is told that run's value."""
    grid = ["-m", "epochs=1", *FAST, "tracking.experiment=reuse"]
    assert run_cli(*grid, "seed=0,1", cwd=workdir).returncode == 0
    (first,), trained = sweep_runs(workdir, "reuse")
    proc = run_cli(*grid, "seed=0,1,2", cwd=workdir)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "3 jobs, 1 trained, 2 reused, 0 failed" in proc.stdout
    parents, children = sweep_runs(workdir, "reuse")
    (second,) = [p for p in parents if p.info.run_id != first.info.run_id]
    records = [r for r in children if r.data.tags.get("mlflow.parentRunId") == second.info.run_id]
    assert (second.data.metrics["sweep/trained"], second.data.metrics["sweep/reused"]) == (1, 2)
    client = MlflowClient(f"sqlite:///{workdir}/mlflow.db")
    by_seed = {r.data.params["seed"]: r for r in trained}
    for record in (r for r in records if "imgexp.reused_from" in r.data.tags):
        original = by_seed[record.data.params["seed"]]
        assert record.data.tags["imgexp.reused_from"] == original.info.run_id and record.info.status == "FINISHED"
        assert record.data.params == original.data.params and record.data.metrics == original.data.metrics
        assert record.data.tags["imgexp.config_hash"] == original.data.tags["imgexp.config_hash"]
        history = [(m.step, m.value) for m in client.get_metric_history(record.info.run_id, "val/acc")]
        assert history == [(m.step, m.value) for m in client.get_metric_history(original.info.run_id, "val/acc")]
    assert sorted(r.data.params["seed"] for r in records if "imgexp.reused_from" not in r.data.tags) == ["2"]

    from imgexp.compare.run import compare
    from test_compare import cells, settings

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{workdir}/mlflow.db")
    for selection in ("sweep=latest", "experiment=reuse"):  # the experiment holds 5 runs: 3 trained
        compare(settings(selection, "metrics=[test/acc]"), workdir / selection)
        assert cells(workdir / selection).loc[("test/acc", "small_cnn"), "n"] == 3
    monkeypatch.delenv("MLFLOW_TRACKING_URI")

    proc = run_cli(*grid, "seed=0", "reuse=false", cwd=workdir)
    assert proc.returncode == 0 and "1 jobs, 1 trained, 0 reused" in proc.stdout, proc.stderr[-2000:]
    proc = run_cli("-m", *OPTUNA, "hydra.sweeper.study_name=reuse", "hydra.sweeper.n_trials=2",
                   "hydra.sweeper.sampler=grid", "seed=choice(0,1)", "epochs=1", *FAST,
                   "tracking.experiment=reuse", cwd=workdir)
    assert proc.returncode == 0, proc.stderr[-2000:]
    study = study_of(workdir, "reuse")
    assert sorted(t.params["seed"] for t in study.trials) == [0, 1]
    for trial in study.trials:  # told the reused run's value (two seeds may tie: compare per trial)
        assert trial.value == by_seed[str(trial.params["seed"])].data.metrics["val/acc_best"]
    optuna_parent = max(sweep_runs(workdir, "reuse")[0], key=lambda p: p.info.start_time)
    assert optuna_parent.data.metrics["sweep/reused"] == 2


@pytest.mark.slow
def test_reuse_needs_the_same_code_version_unless_any(tmp_path):
    from imgexp.tracking.store import CODE_VERSION_TAG, code_version
    from imgexp.tracking.reuse import finished_run

    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    exp = client.create_experiment("versions")

    def trained(status: str, **tags: str) -> str:
        run = client.create_run(exp, tags={"imgexp.config_hash": "abc", CODE_VERSION_TAG: code_version(), **tags})
        client.log_metric(run.info.run_id, "val/acc_best", 0.5)
        client.set_terminated(run.info.run_id, status)
        return run.info.run_id

    trained("FAILED"), trained("KILLED"), trained("FINISHED", **{"imgexp.status": "pruned"})
    assert finished_run(client, exp, "abc", "true", ["val/acc_best"]) is None, "failed, killed, pruned: never"
    old = trained("FINISHED", **{CODE_VERSION_TAG: "0.0.1+0123456789ab"})
    assert finished_run(client, exp, "abc", "true", ["val/acc_best"]) is None
    assert finished_run(client, exp, "abc", "any", ["val/acc_best"]).info.run_id == old
    assert finished_run(client, exp, "abc", "any", ["test/acc"]) is None, "a run without the metric"
    current = trained("FINISHED")
    assert finished_run(client, exp, "abc", "true", ["val/acc_best"]).info.run_id == current
    assert finished_run(client, exp, "xyz", "any", ["val/acc_best"]) is None


@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["parallel", "slurm_local"])
def test_grid_sweep_under_process_launchers(workdir, launcher):
    proc = run_cli("-m", f"hydra/launcher={launcher}", "epochs=1", "seed=0,1", *FAST,
                   "tracking.experiment=launch", cwd=workdir)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (parent,), children = sweep_runs(workdir, "launch")
    assert_children_of(parent, children, 2)
    assert sorted(r.data.params["seed"] for r in children) == ["0", "1"]
    assert all(r.info.status == "FINISHED" for r in children)


# ------------------------------------------------------------------ optuna
@pytest.mark.parametrize("status,value,state,values,error", [
    (JobStatus.COMPLETED, 0.75, TrialState.COMPLETE, [0.75], None),
    (JobStatus.COMPLETED, [0.75, 3], TrialState.COMPLETE, [0.75, 3], None),
    (JobStatus.COMPLETED, float("nan"), TrialState.FAIL, [], "the job returned [nan], not finite numbers"),
    (JobStatus.FAILED, TrialPruned("pruned at epoch 2"), TrialState.PRUNED, [], "pruned at epoch 2"),
    (JobStatus.FAILED, RuntimeError("boom"), TrialState.FAIL, [], "boom"),
])
def test_what_a_finished_job_tells_its_trial(status, value, state, values, error):
    ret = JobReturn(overrides=["optimizer.lr=0.1", "tracking.parent_run_id=abc", "trial.number=3"], status=status,
                    _return_value=value)
    got_state, got_values, got_error = outcome(ret)
    assert (got_state, got_values) == (state, values)
    assert (got_error is None) == (error is None) and (error is None or str(got_error) == error)
    if got_state == TrialState.FAIL:  # what the sweep summary records: the user's overrides and the error
        assert failure(ret, got_error) == {"job": None, "overrides": ["optimizer.lr=0.1"], "error": error}


def study_of(workdir: Path, name: str, storage=None) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=storage or f"sqlite:///{workdir}/optuna/{name}.db")


def counted(study: optuna.Study) -> list:
    """The trials that count towards n_trials: all but interrupted ones (FAIL without an error)."""
    return [t for t in study.trials if not (t.state == TrialState.FAIL and "imgexp.error" not in t.user_attrs)]


def test_the_heartbeat_goes_on_after_a_storage_error(caplog):
    """One failed write (a journal lock taken from under it, a database gone for a moment) is logged, and the
    next beat is recorded: the trial is not left to look dead to the other workers."""
    class FlakyStorage:
        def __init__(self):
            self.beats, self.calls = [], 0

        def set_trial_system_attr(self, trial_id, key, value):
            self.calls += 1
            if self.calls == 1:
                raise RuntimeError("Error: did not possess lock")
            self.beats.append((trial_id, key))

    from hydra._internal.core_plugins.basic_launcher import BasicLauncher

    sweeper = SimpleNamespace(cfg=SimpleNamespace(custom_search_space=None, n_jobs=1, heartbeat_interval=0.05),
                              launcher=BasicLauncher())
    storage = FlakyStorage()
    loop = TrialLoop(sweeper, None, storage, None, None, {}, [], 1)
    loop.in_flight[Future()] = SimpleNamespace(_trial_id=7, number=3)
    beating = threading.Thread(target=loop.heartbeat)
    beating.start()
    deadline = time.time() + 10
    while len(storage.beats) < 2 and time.time() < deadline:
        time.sleep(0.01)
    loop.beat.set()
    beating.join(5)
    assert storage.beats[:2] == [(7, "imgexp:heartbeat")] * 2
    assert "trial 3: heartbeat not recorded (Error: did not possess lock); trying again in 0.05 s" in caplog.text


@pytest.mark.slow
def test_optuna_median_pruner_prunes_the_hopeless_trials(workdir):
    proc = run_cli("-m", *OPTUNA, "hydra.sweeper.study_name=prune", "hydra.sweeper.n_trials=6",
                   "hydra.sweeper.pruner=median", "hydra.sweeper.pruner_startup_trials=1", "hydra.sweeper.sampler=random",
                   "hydra.sweeper.seed=0", "optimizer.lr=choice(0.003,1e-9)", "epochs=3", *FAST,
                   "reuse=false",  # the two configs repeat: train each trial, so the pruner sees them
                   "tracking.experiment=prune", cwd=workdir)
    assert proc.returncode == 0, proc.stderr[-2000:]
    study = study_of(workdir, "prune")
    states = [t.state for t in study.trials]
    assert len(states) == 6 and TrialState.PRUNED in states and TrialState.FAIL not in states
    pruned = [t for t in study.trials if t.state == TrialState.PRUNED]
    assert all(t.params["optimizer.lr"] == 1e-9 for t in pruned), "only the lr that cannot learn is pruned"
    (parent,), children = sweep_runs(workdir, "prune")
    assert_children_of(parent, children, 6)
    by_trial = {int(r.data.tags["imgexp.trial"]): r for r in children}
    for number, r in by_trial.items():
        lr = study.trials[number].params["optimizer.lr"]
        pruned_ = study.trials[number].state == TrialState.PRUNED
        assert r.data.tags["mlflow.runName"] == f"trial {number}: optimizer.lr={lr}" + " (pruned)" * pruned_
        assert study.trials[number].user_attrs["mlflow_run_id"] == r.info.run_id  # what optuna-dashboard shows
    assert study.metric_names == ["val/acc_best"]
    assert parent.data.tags["mlflow.runName"] == "optuna study prune"
    assert "trial." not in proc.stdout, "the launch lines show the user's overrides only"
    client = MlflowClient(f"sqlite:///{workdir}/mlflow.db")
    for t in pruned:
        run = by_trial[t.number]
        assert run.info.status == "FINISHED" and run.data.tags["imgexp.status"] == "pruned"
        assert len(client.get_metric_history(run.info.run_id, "val/acc")) < 3, "pruned before the last epoch"
        assert not client.list_artifacts(run.info.run_id, "checkpoints"), "a pruned trial keeps no checkpoint"
    best = study.best_trial
    assert parent.data.metrics["sweep/best_value"] == pytest.approx(best.value)
    assert parent.data.tags["best.optimizer.lr"] == str(best.params["optimizer.lr"])
    results = json.loads(next(workdir.glob("multirun/*/*/optimization_results.json")).read_text())
    assert results["best_trial"] == best.number and results["best_params"] == best.params


def toy_study(directions: list[str], complete: int, same_values: bool = False) -> optuna.Study:
    """An in-memory study over a log-scale lr and a batch choice: ``complete`` completed trials and a pruned one."""
    space = {"lr": optuna.distributions.FloatDistribution(1e-4, 1e-2, log=True),
             "batch": optuna.distributions.CategoricalDistribution([32, 64])}
    study = optuna.create_study(directions=directions)
    for i in range(complete):
        values = [0.5, 1.0] if same_values else [0.5 + 0.1 * i * (-1) ** i, 1.0 / (i + 1)]
        study.add_trial(optuna.trial.create_trial(params={"lr": 1e-4 * 2 ** i, "batch": (32, 64)[i % 2]},
                                                  distributions=space, values=values[:len(directions)]))
    study.add_trial(optuna.trial.create_trial(params={"lr": 1e-3, "batch": 32}, distributions=space,
                                              state=TrialState.PRUNED))
    return study


PLOTS = ["optuna/optimization_history.png", "optuna/parallel_coordinate.png", "optuna/param_importances.png"]


@pytest.mark.parametrize("directions,complete,expected", [
    (["maximize"], 6, PLOTS),
    (["maximize", "minimize"], 6, PLOTS + ["optuna/pareto_front.png"]),
    (["maximize"], 1, []),  # nothing to plot from one trial: no importances, and no error
])
def test_study_plots_draw_the_plots_that_apply(directions, complete, expected, tmp_path, caplog):
    from imgexp.analysis.pyplot import plt

    style, open_before = dict(plt.rcParams), set(plt.get_fignums())
    caplog.set_level("INFO", logger="imgexp.tracking.study_plots")
    figures = study_plots(toy_study(directions, complete), ["val/acc_best", "val/loss"][:len(directions)])
    assert sorted(figures) == sorted(expected)
    left_out = [r for r in caplog.records if r.name == "imgexp.tracking.study_plots"]
    assert len(left_out) == 2 + len(directions) - len(expected), "one line per plot left out (3 or 4 apply)"
    assert dict(plt.rcParams) == style, "Optuna's style sheet stays inside"
    paths = save_figures(figures, tmp_path)
    assert sorted(p.relative_to(tmp_path).as_posix() for p in paths) == sorted(expected)
    assert all(p.stat().st_size > 0 for p in paths) and set(plt.get_fignums()) <= open_before, "saved and closed"


def test_study_plots_leave_out_a_plot_that_fails(caplog):
    """fANOVA raises on trials whose values are all equal: the importances are left out, the rest drawn."""
    from imgexp.analysis.pyplot import plt

    figures = study_plots(toy_study(["maximize"], 4, same_values=True), ["val/acc_best"])
    assert sorted(figures) == [PLOTS[0], PLOTS[1]]
    (line,) = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert line.startswith("optuna plot param_importances left out: ")
    for figure in figures.values():
        plt.close(figure)


@pytest.mark.slow
def test_optuna_sweep_leaves_its_plots_on_the_parent_run(workdir):
    """A 6-trial study of two objectives: its parent run holds Optuna's four plots under optuna/; a rerun of
    the finished study without tracking draws them again, into its own sweep dir."""
    sweep = ["-m", *OPTUNA, "hydra.sweeper.study_name=plots", "hydra.sweeper.n_trials=6", "hydra.sweeper.seed=0",
             "hydra.sweeper.sampler=random", "hydra.sweeper.direction=[maximize,minimize]",
             "optimized_metric=[val/acc_best,val/loss]", "optimizer.lr=tag(log,interval(1e-4,1e-2))",
             "batch=choice(32,64)", "epochs=1", *FAST, "tracking.experiment=plots"]
    proc = run_cli(*sweep, cwd=workdir)
    assert proc.returncode == 0, proc.stderr[-2000:]
    plots = sorted(PLOTS + ["optuna/pareto_front.png"])
    (parent,), _ = sweep_runs(workdir, "plots")
    client = MlflowClient(f"sqlite:///{workdir}/mlflow.db")
    assert sorted(a.path for a in client.list_artifacts(parent.info.run_id, "optuna")) == plots
    assert {a.path for a in client.list_artifacts(parent.info.run_id)} == {
        "optuna", "optimization_results.json", "sweep_summary.json"}
    assert parent.info.status == "FINISHED"
    proc = run_cli(*sweep, "tracking.enabled=false", cwd=workdir)
    assert proc.returncode == 0, proc.stderr[-2000:]
    dirs = sorted(workdir.glob("multirun/*/*"), key=lambda d: d.stat().st_mtime)
    assert len(dirs) == 2 and len(study_of(workdir, "plots").trials) == 6, "the rerun trains nothing"
    for d in dirs:
        assert sorted(p.relative_to(d).as_posix() for p in d.glob("optuna/*")) == plots


def optuna_command(name: str, n_trials: int, experiment: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "imgexp", "-m", *OPTUNA, f"hydra.sweeper.study_name={name}",
            f"hydra.sweeper.n_trials={n_trials}", "optimizer.lr=tag(log,interval(1e-4,1e-2))", "epochs=1", *FAST,
            f"tracking.experiment={experiment}", *extra]


def env():
    return {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "HYDRA_FULL_ERROR")}


@pytest.mark.slow
def test_optuna_sweep_killed_and_rerun_ends_with_n_trials(workdir):
    cmd = optuna_command("resume", 5, "resume")
    first = subprocess.Popen(cmd, cwd=workdir, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    lock = StudyLock(f"sqlite:///{workdir}/optuna/resume.db", "resume")  # as a worker would, not mid-creation
    deadline = time.time() + 240
    while time.time() < deadline:
        time.sleep(0.5)
        if (workdir / "optuna/resume.db").exists():
            with lock.held():
                try:
                    if sum(t.state == TrialState.COMPLETE for t in study_of(workdir, "resume").trials) >= 2:
                        break
                except KeyError:  # no study yet
                    pass
    first.send_signal(signal.SIGKILL)
    first.wait()
    done_before = len(study_of(workdir, "resume").trials)
    assert 2 <= done_before < 5
    rerun = subprocess.run(cmd, cwd=workdir, env=env(), capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    study = study_of(workdir, "resume")
    assert len(counted(study)) == 5 and all(t.state == TrialState.COMPLETE for t in counted(study))
    for lost in (t for t in study.trials if t not in counted(study)):  # killed mid-trial: run again
        (retry,) = [t for t in study.trials if t.user_attrs.get("imgexp.retry_of") == lost.number]
        assert retry.params == lost.params
    (parent,), children = sweep_runs(workdir, "resume")
    assert all(r.info.status in ("FINISHED", "KILLED") for r in children), "the killed trial's run is closed"
    finished = [r for r in children if r.info.status == "FINISHED"]
    assert sorted(int(r.data.tags["imgexp.trial"]) for r in finished) == sorted(t.number for t in counted(study))
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parent.info.run_id}, "one parent across reruns"
    assert len({p.name for p in workdir.glob("multirun/*/*")}) == 2, "the rerun writes to a new sweep directory"


def run_two_workers(workdir: Path, cmd: list[str]) -> None:
    workers = [subprocess.Popen(cmd, cwd=workdir, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                text=True) for _ in range(2)]
    for w in workers:
        _, err = w.communicate(timeout=300)
        assert w.returncode == 0, err[-2000:]


def assert_shared_study(workdir: Path, study: optuna.Study, experiment: str, n: int) -> None:
    assert len(study.trials) == n and all(t.state == TrialState.COMPLETE for t in study.trials)
    (parent,), children = sweep_runs(workdir, experiment)
    assert_children_of(parent, children, n)
    assert sorted(int(r.data.tags["imgexp.trial"]) for r in children) == list(range(n)), "one run per trial"
    assert len({r.data.params["optimizer.lr"] for r in children}) == n


@pytest.mark.slow
def test_two_workers_share_one_sqlite_study(workdir):
    run_two_workers(workdir, optuna_command("shared", 5, "shared"))
    assert_shared_study(workdir, study_of(workdir, "shared"), "shared", 5)


def journal_storage(path: Path) -> optuna.storages.JournalStorage:
    return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(path)))


@pytest.mark.slow
def test_three_workers_share_one_journal_file_and_a_killed_workers_trial_runs_again(workdir):
    """A study in Optuna's journal file on a shared folder, no database: three workers run a 9-point grid, one is
    killed (kill -9) mid-trial, another worker joins; every point ends COMPLETE once, the killed trial re-run with
    its parameters."""
    journal = workdir / "shared" / "study.log"
    cmd = [sys.executable, "-m", "imgexp", "-m", *OPTUNA, "hydra.sweeper.study_name=journal", "hydra.sweeper.n_trials=9",
           "hydra.sweeper.sampler=grid", f"hydra.sweeper.storage=journal://{journal}", "seed=choice(0,1,2,3,4,5,6,7,8)",
           "epochs=1", *FAST, "tracking.experiment=journal"]
    workers = [subprocess.Popen(cmd, cwd=workdir, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                text=True) for _ in range(3)]
    deadline = time.time() + 240
    while time.time() < deadline:  # until a trial has finished and each worker runs one, the first among them
        time.sleep(0.2)
        try:
            trials = study_of(workdir, "journal", journal_storage(journal)).trials if journal.exists() else []
        except KeyError:  # no study yet
            continue
        if any(t.state == TrialState.COMPLETE for t in trials) and workers[0].poll() is None and \
                sum(t.state == TrialState.RUNNING for t in trials) == len(workers):
            break
    workers[0].send_signal(signal.SIGKILL)
    workers[0].wait()
    workers.append(subprocess.Popen(cmd, cwd=workdir, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                    text=True))
    for w in workers[1:]:
        _, err = w.communicate(timeout=300)
        assert w.returncode == 0, err[-2000:]
    study = study_of(workdir, "journal", journal_storage(journal))
    assert sorted(t.params["seed"] for t in counted(study)) == list(range(9))
    assert all(t.state == TrialState.COMPLETE for t in counted(study))
    lost = [t for t in study.trials if t not in counted(study)]
    assert lost, "the killed worker's trial is in the study, FAIL without an error"
    for t in lost:
        (retry,) = [r for r in study.trials if r.user_attrs.get("imgexp.retry_of") == t.number]
        assert retry.params == t.params
    (parent,), children = sweep_runs(workdir, "journal")
    finished = [r for r in children if r.info.status == "FINISHED"]
    assert sorted(int(r.data.tags["imgexp.trial"]) for r in finished) == sorted(t.number for t in counted(study))
    assert parent.data.tags["imgexp.storage"] == f"journal://{journal}"


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["sqlite", "journal"])
def test_a_trial_whose_worker_died_before_its_first_heartbeat_is_run_again(workdir, backend):
    """A worker killed between asking for a trial and its first heartbeat leaves a RUNNING trial that no
    heartbeat makes stale (Optuna skips trials without one): the next worker fails and retries it, not waits
    for it forever."""
    journal = workdir / "study.log"
    storage = journal_storage(journal) if backend == "journal" else None
    extra = [f"hydra.sweeper.storage=journal://{journal}"] if backend == "journal" else []
    assert subprocess.run(optuna_command("orphan", 1, "orphan", *extra), cwd=workdir, env=env(),
                          capture_output=True, timeout=300).returncode == 0
    orphan = study_of(workdir, "orphan", storage).ask()  # what the killed worker left: RUNNING, never beaten
    done = subprocess.run(optuna_command("orphan", 3, "orphan", *extra), cwd=workdir, env=env(), capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    study = study_of(workdir, "orphan", storage)
    assert study.trials[orphan.number].state == TrialState.FAIL
    (retry,) = [t for t in study.trials if t.user_attrs.get("imgexp.retry_of") == orphan.number]
    assert [t.state for t in counted(study)] == [TrialState.COMPLETE] * 3 and retry in counted(study)


@pytest.fixture(scope="module")
def postgres_url():
    """A throwaway PostgreSQL server on a free local port (Debian's postgresql package; .ci/run installs it)."""
    bins = sorted(glob.glob("/usr/lib/postgresql/*/bin"))
    if not bins:
        pytest.skip("PostgreSQL is not installed (apt-get install postgresql)")
    data = tempfile.mkdtemp(prefix="imgexp-pg-")
    as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    if as_postgres:
        shutil.chown(data, "postgres")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    subprocess.run([*as_postgres, f"{bins[-1]}/initdb", "-D", data, "-A", "trust", "-U", "postgres"], check=True,
                   capture_output=True)
    subprocess.run([*as_postgres, f"{bins[-1]}/pg_ctl", "-D", data, "-w", "-l", f"{data}/log", "-o",
                    f"-p {port} -k {data} -c listen_addresses=127.0.0.1", "start"], check=True, capture_output=True)
    yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    subprocess.run([*as_postgres, f"{bins[-1]}/pg_ctl", "-D", data, "-m", "immediate", "stop"], capture_output=True)
    shutil.rmtree(data, ignore_errors=True)


@pytest.mark.slow
def test_two_workers_share_one_postgresql_study(workdir, postgres_url):
    run_two_workers(workdir, optuna_command("pg", 5, "pg", f"hydra.sweeper.storage={postgres_url}"))
    assert_shared_study(workdir, study_of(workdir, "pg", postgres_url), "pg", 5)
