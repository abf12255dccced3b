"""Interrupted runs continue where they stopped, in the same MLflow run, with every epoch logged once and
the metrics of an uninterrupted run: after kill -9, after SIGTERM, from a run id on another directory, and
as the Optuna sweeper's retry of a killed trial."""
from __future__ import annotations

import glob
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from mlflow import MlflowClient

from conftest import run_cli

pytestmark = pytest.mark.slow  # real processes: left out of the quick tier (README, Tests)

RUN = ["epochs=4", "batch=16", "progress=false", "analysis=none", "data.subset=400"]  # 4 x 25 steps
METRICS = ("train/loss", "train/acc", "val/loss", "val/acc", "test/acc", "test/f1_macro")


def env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "HYDRA_FULL_ERROR")}


def default_signals() -> None:
    """SIGINT and SIGHUP as a terminal's process has them: a test suite started in the background or under
    nohup ignores them, and a child would inherit that (and imgexp keeps an ignored SIGHUP ignored)."""
    for sig in (signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_DFL)


def start(args: list[str], cwd: Path, min_epoch_s: float = 1.0) -> subprocess.Popen:
    """``python -m imgexp args`` in the background, with default signal handling. Each epoch lasts at least
    ``min_epoch_s``, so a signal sent once epoch 1's checkpoint exists lands in a later epoch however loaded
    the machine is."""
    return subprocess.Popen([sys.executable, "-m", "imgexp", *args], cwd=cwd,
                            env={**env(), "IMGEXP_TEST_MIN_EPOCH_S": str(min_epoch_s)}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, preexec_fn=default_signals)


def wait_for(pattern: str, cwd: Path, proc: subprocess.Popen, timeout: float = 120) -> None:
    """Until a file matching ``pattern`` exists (e.g. the first epoch's last.pt)."""
    deadline = time.time() + timeout
    while not glob.glob(str(cwd / pattern)):
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        assert time.time() < deadline, f"no {pattern} after {timeout} s"
        time.sleep(0.05)


def runs(cwd: Path, experiment: str = "imgexp"):
    client = MlflowClient(f"sqlite:///{cwd / 'mlflow.db'}")
    exp = client.get_experiment_by_name(experiment)
    return client, client.search_runs([exp.experiment_id], order_by=["attributes.start_time ASC"])


def summary(client: MlflowClient, run) -> dict:
    """Every epoch's metrics as [(step, value)] and the final ones."""
    out = {k: [(m.step, m.value) for m in sorted(client.get_metric_history(run.info.run_id, k), key=lambda m: m.step)]
           for k in METRICS[:4]}
    return out | {k: run.data.metrics[k] for k in METRICS[4:]}


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict:
    """The uninterrupted run."""
    cwd = tmp_path_factory.mktemp("reference")
    proc = run_cli(*RUN, cwd=cwd)
    assert proc.returncode == 0, proc.stderr[-2000:]
    client, (run,) = runs(cwd)
    return summary(client, run)


def test_kill_9_then_resume_auto_continues_the_same_run(workdir, reference):
    first = start(RUN, workdir)
    wait_for("outputs/*/*/checkpoints/*/last.pt", workdir, first)  # epoch 1 done: now in epoch 2
    first.send_signal(signal.SIGKILL)
    first.communicate()
    client, (killed,) = runs(workdir)
    assert killed.info.status == "RUNNING"  # a killed process says nothing
    logged = [m.step for m in client.get_metric_history(killed.info.run_id, "val/acc")]
    assert len(logged) < 4  # maybe none: last.pt is written before the epoch's metrics are logged

    again = run_cli(*RUN, "resume=auto", cwd=workdir)
    assert again.returncode == 0, again.stderr[-2000:]
    assert f"resuming MLflow run {killed.info.run_id} (resume=auto) after epoch" in again.stdout
    client, (run,) = runs(workdir)  # the same run, reopened
    assert run.info.run_id == killed.info.run_id and run.info.status == "FINISHED"
    assert summary(client, run) == reference  # epochs 1-4 once each, and the uninterrupted run's numbers

    fresh = run_cli(*RUN, "resume=auto", cwd=workdir)  # nothing unfinished left: a new run
    assert fresh.returncode == 0 and "no unfinished run" in fresh.stdout
    assert len(runs(workdir)[1]) == 2


def test_sigterm_saves_then_resume_from_run_id_elsewhere(workdir, reference):
    first = start(RUN, workdir)
    wait_for("outputs/*/*/checkpoints/*/last.pt", workdir, first)
    first.send_signal(signal.SIGTERM)
    _, err = first.communicate(timeout=60)
    assert first.returncode == 143
    last_line = err.strip().splitlines()[-1]
    assert last_line.startswith("imgexp: stopped by SIGTERM") and "Traceback" not in err
    client, (stopped,) = runs(workdir)
    assert stopped.info.status == "KILLED" and stopped.data.tags["imgexp.status"] == "interrupted"
    assert last_line.endswith(f"continue with: python -m imgexp {' '.join(RUN)} resume={stopped.info.run_id}")

    # another machine: an empty directory, the same tracking store; the checkpoint comes from the artifacts
    shutil.rmtree(workdir / "outputs")
    elsewhere = workdir / "elsewhere"
    elsewhere.mkdir()
    again = run_cli(*RUN, f"tracking.uri=sqlite:///{workdir / 'mlflow.db'}", f"resume={stopped.info.run_id}",
                    cwd=elsewhere)
    assert again.returncode == 0, again.stderr[-2000:]
    client, (run,) = runs(workdir)
    assert run.info.status == "FINISHED" and "imgexp.status" not in run.data.tags
    assert summary(client, run) == reference


def test_a_killed_optuna_trial_is_retried_from_its_last_epoch(workdir):
    cmd = [sys.executable, "-m", "imgexp", "-m", "hydra/sweeper=optuna", "hydra.sweeper.heartbeat_interval=1",
           "hydra.sweeper.n_trials=2", "hydra.sweeper.study_name=r", "hydra.sweeper.pruner=median",
           "hydra.sweeper.sampler=random", "optimizer.lr=tag(log,interval(1e-4,1e-2))", *RUN]
    first = subprocess.Popen(cmd, cwd=workdir, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wait_for("multirun/*/*/0/checkpoints/*/last.pt", workdir, first)
    first.send_signal(signal.SIGKILL)
    first.communicate()
    again = subprocess.run(cmd, cwd=workdir, env=env(), capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "trial 0 was interrupted: running it again" in again.stdout

    study = optuna.load_study(study_name="r", storage=f"sqlite:///{workdir}/optuna/r.db")
    lost, retry = study.trials[0], next(t for t in study.trials if t.user_attrs.get("imgexp.retry_of") == 0)
    assert retry.params == lost.params and retry.state.name == "COMPLETE"
    assert sorted(retry.intermediate_values) == [1, 2, 3, 4]  # pruning reports go on from the resumed epoch
    _, children = runs(workdir)
    children = [r for r in children if r.data.tags.get("imgexp.role") != "sweep"]
    assert len(children) == 2 and all(r.info.status == "FINISHED" for r in children)  # the lost run, reopened
    resumed = next(r for r in children if r.data.tags["imgexp.trial"] == str(retry.number))
    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    assert [m.step for m in client.get_metric_history(resumed.info.run_id, "val/acc")] == [1, 2, 3, 4]
    assert "resuming" in again.stdout and "after epoch" in again.stdout


def test_a_rerun_sweep_continues_its_interrupted_job_then_reuses_it(workdir, reference):
    sweep = ["-m", "seed=0", *RUN]
    first = start(sweep, workdir)
    wait_for("multirun/*/*/0/checkpoints/*/last.pt", workdir, first)
    first.send_signal(signal.SIGTERM)
    first.communicate(timeout=60)
    client, (parent, stopped) = runs(workdir)
    assert stopped.info.status == "KILLED" and stopped.data.tags["mlflow.parentRunId"] == parent.info.run_id

    again = run_cli(*sweep, cwd=workdir)  # the same sweep again: the job continues the KILLED run
    assert again.returncode == 0, again.stderr[-2000:]
    assert f"resuming MLflow run {stopped.info.run_id}" in again.stdout
    client, (_, run, parent) = runs(workdir)
    assert run.info.run_id == stopped.info.run_id and run.info.status == "FINISHED"
    assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id, "it now belongs to the sweep that finished it"
    assert summary(client, run) == reference

    third = run_cli(*sweep, cwd=workdir)  # and once more: nothing to train
    assert third.returncode == 0 and "1 jobs, 0 trained, 1 reused, 0 failed" in third.stdout, third.stderr[-2000:]
