"""Faults of a hostile or unlucky user that once recorded wrong numbers or left runs behind (issue 20):
resume with another config or of a live run, kill -9 of a sweep, two sweeps in one second, a wrong
number of objectives, a full disk, SIGHUP, a truncated checkpoint, a finished run resumed, bad sweep
values. Every test here failed on the code before the fix."""
from __future__ import annotations

import glob
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from mlflow import MlflowClient

from conftest import run_cli
from test_resume import RUN, env, runs, start, wait_for


def stopped_run(workdir: Path, args: list[str] = RUN, sig: int = signal.SIGTERM):
    """A run of ``args`` stopped by ``sig`` during its second epoch: (process's stderr, the run)."""
    proc = start(args, workdir)
    wait_for("outputs/*/*/checkpoints/*/last.pt", workdir, proc)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    _, (run,) = runs(workdir)
    return proc.returncode, err, run


def text_artifact(client: MlflowClient, run_id: str, path: str, dest: Path) -> str:
    return Path(client.download_artifacts(run_id, path, str(dest))).read_text()


# ------------------------------------------------------------------ resume trains the run's own config
@pytest.mark.slow
def test_resume_with_another_config_is_refused_and_the_run_keeps_its_own(workdir):
    code, _, stopped = stopped_run(workdir)
    assert code == 143 and stopped.info.status == "KILLED"
    run_id, digest = stopped.info.run_id, stopped.data.tags["imgexp.config_hash"]

    for override, named in (("optimizer.lr=0.01", "optimizer.lr: 0.001 -> 0.01"),
                            ("optimizer=sgd", "optimizer.momentum: (none) -> 0.9")):
        refused = run_cli(*RUN, override, f"resume={run_id}", cwd=workdir)
        assert refused.returncode == 1
        line = refused.stderr.strip().splitlines()[-1]
        assert line.startswith(f"imgexp: error: resume: MLflow run {run_id} was trained with another config (")
        assert named in line and "Traceback" not in refused.stderr

    client, (run,) = runs(workdir)
    assert run.info.status == "KILLED" and run.data.tags["imgexp.config_hash"] == digest
    # keys that cannot change the result may differ: the run ends with its own config, hash and overrides
    again = run_cli(*RUN, "progress=true", "tracking.run_name=renamed", f"resume={run_id}", cwd=workdir)
    assert again.returncode == 0, again.stderr[-2000:]
    client, (run,) = runs(workdir)
    assert run.info.status == "FINISHED" and run.data.tags["imgexp.config_hash"] == digest
    assert run.data.tags["imgexp.overrides"] == " ".join(RUN)
    assert "lr: 0.001" in text_artifact(client, run_id, "config.yaml", workdir)
    assert [m.step for m in client.get_metric_history(run_id, "val/acc")] == [1, 2, 3, 4]

    finished = run_cli(*RUN, f"resume={run_id}", cwd=workdir)  # nothing left to resume
    assert finished.returncode == 1
    assert finished.stderr.strip().splitlines()[-1] == (
        f"imgexp: error: resume: MLflow run {run_id} is FINISHED: there is nothing to resume (start a new run "
        "without resume=)")
    assert len(client.get_metric_history(run_id, "test/acc")) == 1, "test metrics logged once"


@pytest.mark.slow
def test_resume_of_a_run_whose_process_lives_is_refused(workdir):
    live_run = ["epochs=30", *RUN[1:]]
    first = start(live_run, workdir)
    try:
        wait_for("outputs/*/*/checkpoints/*/last.pt", workdir, first)
        _, (live,) = runs(workdir)
        refused = run_cli(*live_run, f"resume={live.info.run_id}", cwd=workdir)
        assert refused.returncode == 1
        assert refused.stderr.strip().splitlines()[-1].startswith(
            f"imgexp: error: resume: MLflow run {live.info.run_id} is still running (pid {first.pid} on "
            f"{socket.gethostname()}, last heartbeat ")
    finally:
        first.kill()
        first.communicate()
    client, (run,) = runs(workdir)
    assert len(client.get_metric_history(run.info.run_id, "val/loss")) <= 30  # nobody else logged into it


@pytest.mark.slow
def test_two_resumes_of_one_run_at_once_never_share_it(workdir):
    code, _, stopped = stopped_run(workdir)
    assert code == 143
    both = [start([*RUN, "resume=auto"], workdir) for _ in range(2)]
    outcomes = [(err, p.returncode) for p in both for _, err in [p.communicate(timeout=300)]]
    client, after = runs(workdir)
    run = next(r for r in after if r.info.run_id == stopped.info.run_id)
    assert run.info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val/acc")] == [1, 2, 3, 4]
    assert len(client.get_metric_history(run.info.run_id, "test/acc")) == 1
    for err, code in outcomes:  # the other one stopped with one line, or trained a new run of its own
        assert code == 0 or err.strip().splitlines()[-1].startswith(
            f"imgexp: error: resume: MLflow run {stopped.info.run_id} is still running"), err[-2000:]
    assert len(after) == sum(code == 0 for _, code in outcomes)


def test_runs_of_other_hosts_are_judged_by_their_heartbeat(workdir):
    """A RUNNING run of another host is lost once its heartbeat is older than LOST_AFTER_S: the next run
    closes it KILLED; one with a fresh heartbeat stays RUNNING and cannot be resumed."""
    from imgexp.tracking.liveness import LOST_AFTER_S, close_lost_runs

    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    experiment = client.create_experiment("x")
    now = time.time()
    ids = {}
    for name, beat in (("fresh", now - 30), ("silent", now - LOST_AFTER_S - 60)):
        tags = {"imgexp.host": "node-elsewhere", "imgexp.pid": "4242", "imgexp.heartbeat": str(int(beat))}
        ids[name] = client.create_run(experiment, tags=tags, run_name=name).info.run_id
    close_lost_runs(client, experiment)
    status = {name: client.get_run(run_id).info for name, run_id in ids.items()}
    assert status["fresh"].status == "RUNNING"
    assert status["silent"].status == "KILLED"
    assert client.get_run(ids["silent"]).data.tags["imgexp.status"] == "lost"
    refused = run_cli(*RUN, "tracking.experiment=x", f"resume={ids['fresh']}", cwd=workdir)
    assert refused.returncode == 1 and "is still running (pid 4242 on node-elsewhere, last heartbeat" in refused.stderr


# ------------------------------------------------------------------ sweeps
@pytest.mark.slow
def test_kill_9_of_a_sweep_closes_its_parent_and_the_rerun_resumes_the_killed_job(workdir):
    sweep = ["-m", "seed=0,1", *RUN]
    first = start(sweep, workdir)
    wait_for("multirun/*/*/1/checkpoints/*/last.pt", workdir, first, timeout=300)
    first.send_signal(signal.SIGKILL)
    first.communicate()
    (killed_dir,) = map(Path, glob.glob(str(workdir / "multirun/*/*/1/checkpoints/*")))
    (killed_dir / ".last.pt.partial").write_bytes(b"half a checkpoint")  # as a kill mid-write leaves it
    _, before = runs(workdir)
    old_parent = next(r for r in before if r.data.tags.get("imgexp.role") == "sweep")
    lost = next(r for r in before if r.data.tags.get("mlflow.runName", r.info.run_name).endswith("seed=1"))
    assert lost.info.status == "RUNNING" and lost.info.run_id == killed_dir.name

    again = run_cli(*sweep, cwd=workdir)
    assert again.returncode == 0, again.stderr[-2000:]
    assert f"resuming MLflow run {lost.info.run_id} (resume=auto)" in again.stdout
    client, after = runs(workdir)
    status = {r.info.run_id: r for r in after}
    assert status[old_parent.info.run_id].info.status == "KILLED"
    assert status[old_parent.info.run_id].data.tags["imgexp.status"] == "lost"
    assert status[lost.info.run_id].info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(lost.info.run_id, "val/acc")] == [1, 2, 3, 4]
    assert not any(r.info.status == "RUNNING" for r in after)
    # the two parents, the job of seed 0 trained once (and its record in the rerun), the job of seed 1 resumed
    assert len(after) == 5 and sum("imgexp.reused_from" in r.data.tags for r in after) == 1
    assert not killed_dir.exists(), "the killed attempt's checkpoints go once the resumed run has its own"
    assert not glob.glob(str(workdir / "multirun/*/*/*/checkpoints/*/.*.pt.*"))


SAME_SECOND = """import datetime, hydra.core.utils
class SameSecond(datetime.datetime):  # Hydra's ${now:} clock, stopped at 12:00:00 but for the microseconds
    @classmethod
    def now(cls, tz=None):
        return datetime.datetime.now(tz).replace(hour=12, minute=0, second=0)
hydra.core.utils.datetime = SameSecond
"""


@pytest.mark.slow
def test_two_sweeps_started_in_the_same_second_keep_their_own_directories(workdir, tmp_path_factory):
    clock = tmp_path_factory.mktemp("clock")
    (clock / "sitecustomize.py").write_text(SAME_SECOND)
    same_second = {**env(), "PYTHONPATH": os.pathsep.join([str(clock), *filter(None, [os.environ.get("PYTHONPATH")])])}
    sweeps = [subprocess.Popen([sys.executable, "-m", "imgexp", "-m", f"seed={seed}", "epochs=1", *RUN[1:]],
                               cwd=workdir, env=same_second, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
              for seed in (0, 1)]
    for proc in sweeps:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-2000:]
    dirs = sorted(Path(p).parent for p in glob.glob(str(workdir / "multirun/*/*/multirun.yaml")))
    assert len(dirs) == 2
    for folder in dirs:
        assert json.loads((folder / "sweep_summary.json").read_text())["jobs"] == 1
        assert (folder / "0" / ".hydra" / "overrides.yaml").exists()
    seeds = {(d / "0" / ".hydra" / "overrides.yaml").read_text().count("seed=1") for d in dirs}
    assert seeds == {0, 1}, "each sweep's job folder is its own"


def test_a_failing_value_in_a_sweep_is_a_failed_child_and_an_unknown_option_stops_before_the_parent(workdir):
    bad = run_cli("-m", "batch=0,32", "epochs=1", *RUN[2:], cwd=workdir)
    assert bad.returncode == 1
    client, children = runs(workdir)
    failed = next(r for r in children if r.data.tags.get("mlflow.runName", r.info.run_name).endswith("batch=0"))
    assert failed.info.status == "FAILED" and failed.data.tags["imgexp.error"] == "batch: must be >= 1, got 0"
    assert failed.data.tags["mlflow.parentRunId"] == next(r.info.run_id for r in children
                                                          if r.data.tags.get("imgexp.role") == "sweep")
    shutil.rmtree(workdir / "multirun")
    (workdir / "mlflow.db").unlink()

    unknown = run_cli("-m", "model=small_cnn,resnet181", "epochs=1", *RUN[2:], cwd=workdir)
    assert unknown.returncode == 1
    assert unknown.stderr.strip().splitlines()[-1].startswith(
        "imgexp: error: In 'config': Could not find 'model/resnet181' (did you mean resnet18 or resnet101 or "
        "resnet152?) (available: ")
    assert not (workdir / "mlflow.db").exists() and not (workdir / "multirun").exists()


@pytest.mark.slow
def test_directions_and_metrics_are_counted_before_the_first_trial(workdir):
    began = time.monotonic()  # a process, with a time-out: the earlier code retried the one trial forever
    proc = run_cli("-m", "hydra/sweeper=optuna", "hydra.sweeper.direction=[maximize,minimize]",
                   "hydra.sweeper.n_trials=1", "optimizer.lr=tag(log,interval(1e-4,1e-2))", *RUN, cwd=workdir,
                   process=True, timeout=120)
    assert time.monotonic() - began < 60
    assert proc.returncode == 1
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith("imgexp: error: hydra.sweeper.direction: 2 directions ['maximize', 'minimize'] but "
                           "optimized_metric names 1 metrics ['val/acc_best']")
    assert not (workdir / "mlflow.db").exists()


def test_an_interrupted_trial_is_tried_three_times_at_most():
    from hydra_plugins.imgexp_optuna_sweeper.retries import ATTEMPT_ATTR, MAX_ATTEMPTS, given_up, not_yet_retried

    study = optuna.create_study()
    dist = {"lr": optuna.distributions.FloatDistribution(1e-4, 1e-2)}
    for attempt in range(1, MAX_ATTEMPTS + 1):
        study.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.FAIL, params={"lr": 1e-3},
                                                  distributions=dist, user_attrs={ATTEMPT_ATTR: attempt}))
    trials = study.get_trials()
    assert [t.number for t in not_yet_retried(trials)] == [0, 1]
    assert [given_up(t) for t in trials] == [False, False, True]


# ------------------------------------------------------------------ checkpoints and signals
@pytest.mark.slow
def test_a_truncated_last_pt_falls_back_to_the_copy_in_mlflow_and_leftovers_go(workdir):
    code, _, stopped = stopped_run(workdir)
    assert code == 143
    folder = Path(stopped.data.tags["imgexp.checkpoint_dir"])
    last = folder / "last.pt"
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])
    again = run_cli(*RUN, "resume=auto", cwd=workdir)
    assert again.returncode == 0, again.stderr[-2000:]
    assert f"MLflow run {stopped.info.run_id} (resume=auto): last.pt cannot be read" in again.stdout
    client, (run,) = runs(workdir)
    assert run.info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val/acc")] == [1, 2, 3, 4]
    assert not folder.exists()
    assert not glob.glob(str(workdir / "outputs/*/*/checkpoints/*/*")), "the finished run's checkpoints are in MLflow"


@pytest.mark.slow
def test_sighup_stops_like_sigterm_unless_nohup_ignores_it(workdir):
    code, err, run = stopped_run(workdir, sig=signal.SIGHUP)
    assert code == 129 and "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith("imgexp: stopped by SIGHUP")
    assert run.info.status == "KILLED" and run.data.tags["imgexp.status"] == "interrupted"

    (workdir / "nohup").mkdir()
    nohup = subprocess.Popen([sys.executable, "-m", "imgexp", "epochs=2", *RUN[1:]], cwd=workdir / "nohup",
                             env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             preexec_fn=lambda: signal.signal(signal.SIGHUP, signal.SIG_IGN))
    wait_for("outputs/*/*/checkpoints/*/last.pt", workdir / "nohup", nohup)  # training: past every set-up
    nohup.send_signal(signal.SIGHUP)
    _, err = nohup.communicate(timeout=300)
    assert nohup.returncode == 0, err[-2000:]


@pytest.fixture
def small_disk(workdir):
    """``workdir/out/checkpoints`` on a 16 MiB tmpfs (root only), so a test can fill it up."""
    folder = workdir / "out" / "checkpoints"
    folder.mkdir(parents=True)
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(folder)],
                                           capture_output=True).returncode != 0:
        pytest.skip("mounting a tmpfs needs root")
    yield folder
    subprocess.run(["umount", "-l", str(folder)], check=True)


@pytest.mark.slow
def test_a_full_disk_leaves_a_resumable_run_and_one_line(workdir, small_disk):
    args = [*RUN, f"hydra.run.dir={workdir / 'out'}"]
    proc = start(args, workdir)
    wait_for("out/checkpoints/*/last.pt", workdir, proc)
    filler = small_disk / "filler"
    with open(filler, "wb", buffering=0) as f:  # fill what is left
        try:
            while True:
                f.write(b"\0" * (1 << 20))
        except OSError:
            pass
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 1 and "Traceback" not in err and "enforce fail" not in err
    line = err.strip().splitlines()[-1]
    assert line.startswith("imgexp: error: no space left on the device: ") and "/out/checkpoints/" in line
    _, (run,) = runs(workdir)
    assert run.info.status == "KILLED" and run.data.tags["imgexp.status"] == "interrupted"
    filler.unlink()
    again = run_cli(*RUN, "resume=auto", cwd=workdir)
    assert again.returncode == 0, again.stderr[-2000:]
    client, (run,) = runs(workdir)
    assert run.info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val/acc")] == [1, 2, 3, 4]


def test_an_unreachable_server_is_one_warning_per_outage(tmp_path, caplog, monkeypatch):
    from imgexp.tracking.tracker import MlflowTracker

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "0")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    uri = f"http://127.0.0.1:{port}"
    tracker = MlflowTracker(MlflowClient(uri), "0" * 32, uri, tmp_path / "spool")
    with caplog.at_level(logging.INFO):
        for epoch in range(1, 4):
            tracker.log_epoch(epoch, {"val/acc": 0.5})
            tracker.set_tags({"a": "b"})
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "unreachable" in warnings[0].getMessage()
    assert tracker.spool.pending() == 6
