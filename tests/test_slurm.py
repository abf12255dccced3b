"""``hydra/launcher=slurm`` on real SLURM clusters of one and two nodes (tests/slurm_cluster.py: munged,
slurmctld and a slurmd per node on 127.0.0.1, all files in a temporary directory). The working directory stands
for the shared file system: the sweep, its jobs and their MLflow store (./mlflow.db) all live there. Skipped
where Debian's slurm-wlm and munge packages are missing (.ci/run installs them)."""
from __future__ import annotations

import re
import threading
from pathlib import Path

import optuna
import pytest
from mlflow import MlflowClient
from optuna.trial import TrialState

from conftest import run_cli
from slurm_cluster import LocalCluster, missing
from test_sweeps import assert_children_of, sweep_runs

pytestmark = [pytest.mark.slurm, pytest.mark.slow, pytest.mark.skipif(missing() is not None, reason=str(missing()))]
FAST = ["analysis=none", "progress=false"]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with LocalCluster(tmp_path_factory.mktemp("slurm")) as c:
        yield c


def slurm(cluster: LocalCluster, timeout_min: int, *extra: str) -> list[str]:
    """The ``slurm`` preset cut down to this node: no GPU, 1 CPU and 1 GB a job."""
    return ["hydra/launcher=slurm", "hydra.launcher.gpus_per_node=0", "hydra.launcher.cpus_per_task=1",
            "hydra.launcher.mem_gb=1", f"hydra.launcher.partition={cluster.partition}",
            f"hydra.launcher.timeout_min={timeout_min}", *extra]


def submitit_logs(workdir: Path) -> dict[str, str]:
    """SLURM job id (``<array>_<task>`` or ``<job>``) -> its submitit log (stdout of the job's task 0)."""
    return {p.parent.name: p.read_text(errors="replace")
            for p in workdir.glob("multirun/*/*/.submitit/*/*_0_log.out")}


def submitit_lines(log: str, message: str) -> list[str]:
    """submitit's own lines (each also appears once more through Hydra's logging) that start with ``message``."""
    return re.findall(rf"^submitit \w+ \([^)]*\) - ({re.escape(message)}.*)$", log, re.M)


def explain(cluster: LocalCluster, workdir: Path, proc) -> str:
    logs = "\n".join(f"==> {job} <==\n{text[-3000:]}" for job, text in submitit_logs(workdir).items())
    return f"{proc.stderr[-3000:]}\n{logs}\n{cluster.logs()}"


def submit_to(cluster: LocalCluster, monkeypatch) -> None:
    """sbatch and squeue talk to ``cluster``; the jobs (which get this environment) use one thread each, as
    cpus_per_task=1 asks: two threads on a loaded 2-core machine make an epoch several times slower."""
    monkeypatch.setenv("SLURM_CONF", cluster.env["SLURM_CONF"])
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


@pytest.fixture
def submit_env(cluster, monkeypatch):
    submit_to(cluster, monkeypatch)


def test_grid_sweep_runs_each_job_as_a_slurm_job(cluster, workdir, submit_env):
    proc = run_cli("-m", *slurm(cluster, 10), "seed=0,1", "batch=32,64", "epochs=1", "data.subset=200", *FAST,
                   "tracking.experiment=slurm", cwd=workdir, timeout=240)
    assert proc.returncode == 0, explain(cluster, workdir, proc)
    (parent,), children = sweep_runs(workdir, "slurm")
    assert_children_of(parent, children, 4)
    assert all(r.info.status == "FINISHED" for r in children)
    assert sorted((int(r.data.params["seed"]), int(r.data.params["batch"])) for r in children) == [
        (s, b) for s in (0, 1) for b in (32, 64)]
    assert parent.data.tags["imgexp.sweeper"] == "grid" and parent.data.metrics["sweep/trained"] == 4

    # each run was trained by a task of one SLURM job array, which SLURM saw complete
    logs = submitit_logs(workdir)
    assert len(logs) == 4, sorted(logs)
    (array,) = {job.split("_")[0] for job in logs}
    assert sorted(logs) == [f"{array}_{i}" for i in range(4)]
    ran = {}
    for job, text in logs.items():
        assert f"Starting with JobEnvironment(job_id={job}," in text
        ran[job] = re.search(r"MLflow run ([0-9a-f]{32})", text).group(1)
    assert sorted(ran.values()) == sorted(r.info.run_id for r in children)
    cluster.wait_for_jobs()
    ctld = (cluster.root / "log" / "slurmctld.log").read_text()
    for job in logs:
        assert re.search(rf"_job_complete: JobId={job}\(\d+\) WEXITSTATUS 0", ctld), job


def test_optuna_trial_past_its_time_limit_is_requeued_and_resumes_its_run(cluster, workdir, submit_env, monkeypatch):
    """timeout_min=1: SLURM checks time limits every 30 s and sends ``--signal=USR2@signal_delay_s`` at the
    first check within 30 s of the limit minus that delay, so signal_delay_s=1 signals 29 to 59 s into the
    job and leaves 30 s before the kill. imgexp stops after its step, saves last.pt, marks the MLflow run
    KILLED and chains to submitit's handler, which requeues the job; the requeued job (SLURM_RESTART_COUNT
    > 0) continues the same run. Training lasts at least 70 s (35 epochs of at least 2 s each, the trainer's
    test hook), so the first signal surely comes during it, however fast the machine runs (measured epoch
    times once fell short when the load dropped mid-test); a 1-minute job may then be requeued again, the
    more so on a loaded machine, hence max_num_timeout=6 rather than the preset's 3."""
    data = ["data.subset=600", "batch=64"]
    epochs = 35  # each at least 2 s (the trainer's test hook): >= 70 s of training, whatever the machine's load
    monkeypatch.setenv("IMGEXP_TEST_MIN_EPOCH_S", "2")
    storage = f"sqlite:///{workdir}/optuna.db"
    limit = ["hydra.launcher.signal_delay_s=1", "hydra.launcher.max_num_timeout=6"]
    proc = run_cli("-m", *slurm(cluster, 1, *limit), "hydra/sweeper=optuna", "hydra.sweeper.study_name=limit",
                   f"hydra.sweeper.storage={storage}", "hydra.sweeper.n_trials=1",
                   "optimizer.lr=tag(log,interval(1e-3,1e-2))", f"epochs={epochs}", *data, *FAST,
                   "tracking.experiment=limit", cwd=workdir, timeout=540)
    assert proc.returncode == 0, explain(cluster, workdir, proc)

    (trial,) = optuna.load_study(study_name="limit", storage=storage).trials
    assert trial.state == TrialState.COMPLETE
    (parent,), (run,) = sweep_runs(workdir, "limit")
    assert_children_of(parent, [run], 1)
    assert run.info.status == "FINISHED" and run.data.tags["imgexp.trial"] == "0"
    history = MlflowClient(f"sqlite:///{workdir}/mlflow.db").get_metric_history(run.info.run_id, "val/acc")
    assert sorted(m.step for m in history) == list(range(1, epochs + 1)), "each epoch logged once, across requeues"

    # one SLURM job, requeued by submitit on SIGUSR2; each requeued run continues the run after an epoch
    ((job, log),) = submitit_logs(workdir).items()
    requeues = len(submitit_lines(log, f"Starting with JobEnvironment(job_id={job},")) - 1
    assert requeues >= 1, explain(cluster, workdir, proc)
    assert len(submitit_lines(log, f"Requeued job {job} ")) == requeues
    assert 1 <= log.count("SIGUSR2 received: stopping after this step") <= requeues
    assert log.count("a requeued SLURM job: resume=auto") == requeues
    resumed = re.findall(r"resuming MLflow run ([0-9a-f]{32}) \(resume=auto\) after epoch (\d+) of", log)
    assert len(resumed) == requeues and {run_id for run_id, _ in resumed} == {run.info.run_id}
    after = [int(e) for _, e in resumed]
    assert after[0] >= 1 and after == sorted(after) and after[-1] <= epochs
    cluster.wait_for_jobs()
    assert (cluster.root / "log" / "slurmctld.log").read_text().count(f"Requeuing JobId={job}") == requeues


def test_a_job_of_two_slurm_tasks_trains_as_two_ranks_of_one_run(cluster, workdir, submit_env):
    proc = run_cli("-m", *slurm(cluster, 10, "hydra.launcher.tasks_per_node=2"), "trainer.devices=2", "device=cpu",
                   "seed=0", "epochs=2", "data.subset=200", *FAST, "tracking.experiment=slurm-ranks", cwd=workdir,
                   timeout=300)
    assert proc.returncode == 0, explain(cluster, workdir, proc)
    (parent,), children = sweep_runs(workdir, "slurm-ranks")
    assert_children_of(parent, children, 1)
    (run,) = children
    assert run.info.status == "FINISHED"
    (job,) = workdir.glob("multirun/*/*/0")
    rank1 = (job / "rank1.log").read_text()
    assert "rank 1 of 2" in rank1 and len(re.findall(r"epoch \d/2:", rank1)) == 2, rank1[-2000:]
    (own,) = [p for p in job.glob("*.log") if p.name != "rank1.log"]  # Hydra's job log: rank 0's
    assert "rank 0 of 2" in own.read_text() and "rank 1 of 2" not in own.read_text()
    client = MlflowClient(f"sqlite:///{workdir}/mlflow.db")
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val/acc")] == [1, 2]


@pytest.fixture(scope="module")
def two_nodes(tmp_path_factory):
    """Two slurmd daemons on this machine, nodes n1 and n2 (tests/slurm_cluster.py)."""
    with LocalCluster(tmp_path_factory.mktemp("slurm2"), nodes=2) as c:
        yield c


def signal_when(workdir: Path, line: str, cluster: LocalCluster, stop: threading.Event) -> list[str]:
    """In a thread: once task 0's log of the (one) SLURM job shows ``line``, send SIGUSR2 to the job's tasks (what
    SLURM sends ahead of a time limit or a preemption); returns the job ids signalled."""
    signalled: list[str] = []

    def watch() -> None:
        while not stop.wait(0.5):
            for job, text in submitit_logs(workdir).items():
                if line in text:
                    cluster.run("scancel", "--signal=USR2", job)
                    signalled.append(job)
                    return

    threading.Thread(target=watch, daemon=True).start()
    return signalled


def test_a_job_over_two_slurm_nodes_is_one_run_of_two_ranks_and_a_requeue_resumes_it(two_nodes, workdir,
                                                                                     monkeypatch):
    """``nodes=2 tasks_per_node=1``: SLURM starts a task on n1 and one on n2, which join as ranks 0 and 1 of one
    run. SIGUSR2 mid-run: the ranks stop after their step, rank 0 saves the state and submitit requeues the job;
    the requeued job (SLURM_RESTART_COUNT=1) resumes the run. The test nodes' names resolve nowhere, so rank 0's
    address comes from MASTER_ADDR (a real cluster's node names resolve: imgexp takes the step's first node)."""
    epochs = 6
    submit_to(two_nodes, monkeypatch)
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("IMGEXP_TEST_MIN_EPOCH_S", "2")  # the signal surely comes before the last epoch
    stop = threading.Event()
    signalled = signal_when(workdir, f"epoch 2/{epochs}:", two_nodes, stop)
    try:
        proc = run_cli("-m", *slurm(two_nodes, 4, "hydra.launcher.nodes=2", "hydra.launcher.tasks_per_node=1"),
                       "trainer.devices=auto", "device=cpu", "seed=0", f"epochs={epochs}", "data.subset=200", *FAST,
                       "tracking.experiment=slurm-nodes", cwd=workdir, timeout=400)
    finally:
        stop.set()
    assert proc.returncode == 0, explain(two_nodes, workdir, proc)
    (parent,), children = sweep_runs(workdir, "slurm-nodes")
    assert_children_of(parent, children, 1)
    (run,) = children
    assert run.info.status == "FINISHED"
    history = MlflowClient(f"sqlite:///{workdir}/mlflow.db").get_metric_history(run.info.run_id, "val/acc")
    assert sorted(m.step for m in history) == list(range(1, epochs + 1)), "each epoch logged once, across the requeue"

    (job,) = signalled
    log = submitit_logs(workdir)[job]
    assert len(submitit_lines(log, f"Starting with JobEnvironment(job_id={job},")) == 2  # the first run, the requeued
    assert "node=0(2), global_rank=0(2)" in log
    (task1,) = workdir.glob(f"multirun/*/*/.submitit/{job}/{job}_1_log.out")
    assert "node=1(2), global_rank=1(2)" in task1.read_text()
    resumed = re.findall(r"resuming MLflow run ([0-9a-f]{32}) \(resume=auto\) after epoch (\d+) of", log)
    assert [run_id for run_id, _ in resumed] == [run.info.run_id] and 2 <= int(resumed[0][1]) < epochs
    (job_dir,) = workdir.glob("multirun/*/*/0")
    assert "rank 1 of 2" in (job_dir / "rank1.log").read_text()
    two_nodes.wait_for_jobs()
    ctld = (two_nodes.root / "log" / "slurmctld.log").read_text()
    assert f"Requeuing JobId={job}" in ctld and re.search(rf"JobId={job} NodeList=n\[1-2\]", ctld), ctld[-3000:]
