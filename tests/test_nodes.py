"""One run over several machines (trainer.nodes, trainer.rendezvous): here two "nodes" are two processes on
127.0.0.1, each in its own working directory, gloo on the CPU, sharing one MLflow store as machines would share
a tracking server."""
from __future__ import annotations

import glob
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient


FAST = ["analysis=none", "progress=false", "data.subset=300", "device=cpu", "epochs=2", "batch=32"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def env(**extra: str) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "HYDRA_FULL_ERROR")}
    return {**base, **extra}


def node_command(workdir: Path, port: int, *extra: str, experiment: str = "nodes", sweep: bool = False) -> list[str]:
    return [sys.executable, "-m", "imgexp", *(["-m"] if sweep else []), *FAST, "trainer.nodes=2", f"trainer.rendezvous=127.0.0.1:{port}",
            f"tracking.uri=sqlite:///{workdir / 'mlflow.db'}", f"tracking.experiment={experiment}", *extra]


def start_nodes(workdir: Path, cmd: list[str], **environ: str) -> list[subprocess.Popen]:
    """Two "machines": each node in its own directory and session (a kill of its group is the machine's loss)."""
    nodes = []
    for k in range(2):
        (workdir / f"machine{k}").mkdir(exist_ok=True)
        nodes.append(subprocess.Popen(cmd, cwd=workdir / f"machine{k}", env=env(**environ), stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True, start_new_session=True))
    return nodes


def finish(nodes: list[subprocess.Popen], timeout: float = 400) -> list[tuple[str, str]]:
    out = [n.communicate(timeout=timeout) for n in nodes]
    for n, (_, err) in zip(nodes, out):
        assert n.returncode == 0, err[-3000:]
    return out


def the_runs(workdir: Path, experiment: str = "nodes"):
    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    return client, client.search_runs([client.get_experiment_by_name(experiment).experiment_id])


def history(client, run, metric: str) -> list[float]:
    return [m.value for m in sorted(client.get_metric_history(run.info.run_id, metric), key=lambda m: m.step)]


@pytest.mark.slow
@pytest.mark.parametrize("devices", [1, 2])
def test_the_same_command_on_two_nodes_is_one_run(workdir, devices):
    """Two nodes of ``devices`` ranks each: one MLflow run with every epoch once; each node logs every one of its
    ranks to node<k>.rank<r>.log in its own directory, and both end with the run's summary."""
    out = finish(start_nodes(workdir, node_command(workdir, free_port(), f"trainer.devices={devices}")))
    client, (run,) = the_runs(workdir)
    assert run.info.status == "FINISHED" and run.data.params["trainer.nodes"] == "2"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val/acc")] == [1, 2]
    logs = {}
    for k in range(2):
        names = [Path(p).name for p in glob.glob(str(workdir / f"machine{k}/outputs/*/*/node*.rank*.log"))]
        logs[k] = {tuple(map(int, re.fullmatch(r"node(\d+)\.rank(\d+)\.log", n).groups())) for n in names}
    assert {node for pairs in logs.values() for node, _ in pairs} == {0, 1}, logs
    assert all(len({node for node, _ in pairs}) == 1 for pairs in logs.values()), "a node logs only its own ranks"
    assert sorted(rank for pairs in logs.values() for _, rank in pairs) == list(range(2 * devices))
    summaries = [re.search(r"test/acc\s+([\d.]+)", text).group(1) for text, _ in out]
    assert summaries[0] == summaries[1] == f"{run.data.metrics['test/acc']:.4f}"


@pytest.mark.slow
def test_two_nodes_train_disjoint_shards_with_identical_parameters_after_every_step(tmp_path):
    """imgexp's launcher over two nodes of one rank each runs tests/ddp_worker.py's training job: the ranks'
    parameters are equal after every step, and their shards split every batch."""
    from ddp_worker import check_records

    cmd = [sys.executable, str(Path(__file__).with_name("ddp_worker.py")), str(tmp_path), f"127.0.0.1:{free_port()}"]
    nodes = [subprocess.Popen(cmd, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    finish(nodes, timeout=300)
    check_records(tmp_path)


@pytest.mark.slow
def test_kill_9_of_a_node_stops_the_other_in_seconds_and_resume_auto_continues_it_exactly(workdir):
    """A machine lost mid-run (its launcher and ranks killed at once): the other node stops within seconds with
    one line, the run is KILLED; the same commands with resume=auto finish it with the numbers of a run left
    alone."""
    slow = {"IMGEXP_TEST_MIN_EPOCH_S": "2"}  # epochs long enough to be killed in
    nodes = start_nodes(workdir, node_command(workdir, free_port(), "epochs=3"), **slow)
    deadline = time.monotonic() + 240
    while not (any(re.search(r"epoch 1/3:", p.read_text()) for p in workdir.glob("machine*/outputs/*/*/node*.rank0.log"))
               and list(workdir.glob("machine*/outputs/*/*/checkpoints/*/last.pt"))):
        assert time.monotonic() < deadline and all(n.poll() is None for n in nodes), "no first epoch"
        time.sleep(0.05)
    os.killpg(nodes[1].pid, signal.SIGKILL)
    killed = time.monotonic()
    _, err = nodes[0].communicate(timeout=120)
    stopped_in = time.monotonic() - killed
    nodes[1].communicate()
    last = err.strip().splitlines()[-1]
    assert nodes[0].returncode != 0 and last.startswith("imgexp: ") and "resume=auto" in last, err[-2000:]
    assert stopped_in < 30, f"the surviving node took {stopped_in:.0f} s to stop"
    client, (run,) = the_runs(workdir)
    assert run.info.status == "KILLED", (run.info.status, err[-2000:])

    finish(start_nodes(workdir, node_command(workdir, free_port(), "epochs=3", "resume=auto")))
    _, found = the_runs(workdir)
    assert [r.info.run_id for r in found] == [run.info.run_id], "resumed into the same run"
    run = client.get_run(run.info.run_id)
    assert run.info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val/acc")] == [1, 2, 3]

    finish(start_nodes(workdir, node_command(workdir, free_port(), "epochs=3", experiment="alone")))
    _, (alone,) = the_runs(workdir, "alone")
    for metric in ("train/loss", "train/acc", "val/loss", "val/acc"):
        assert history(client, run, metric) == pytest.approx(history(client, alone, metric), rel=1e-5), metric
    assert run.data.metrics["test/acc"] == alone.data.metrics["test/acc"]


def job_epochs(workdir: Path, job: int) -> dict[str, int]:
    """Each rank's logged epochs in sweep job ``job``, on both machines: ``{"machine0/node0.rank0.log": 3, ...}``."""
    return {f"{p.parts[-6]}/{p.name}": len(re.findall(r"epoch \d+/\d+:", p.read_text()))
            for p in workdir.glob(f"machine*/multirun/*/*/{job}/node*.rank*.log")}


@pytest.mark.slow
def test_a_grid_sweep_of_jobs_over_two_nodes_is_one_parent_run_with_a_run_per_job(workdir):
    """``-m seed=0,1`` on both nodes: one node leads (the parent run, the grid), the other follows; each job is
    one run whose ranks span both machines."""
    out = finish(start_nodes(workdir, node_command(workdir, free_port(), "seed=0,1", sweep=True)))
    client, found = the_runs(workdir)
    (parent,) = [r for r in found if r.data.tags.get("imgexp.role") == "sweep"]
    jobs = [r for r in found if r is not parent]
    assert sorted(r.data.params["seed"] for r in jobs) == ["0", "1"] and len(found) == 3
    assert all(r.data.tags["mlflow.parentRunId"] == parent.info.run_id and r.info.status == "FINISHED" for r in jobs)
    assert parent.info.status == "FINISHED" and parent.data.metrics["sweep/trained"] == 2
    for run in jobs:
        assert [m.step for m in client.get_metric_history(run.info.run_id, "val/acc")] == [1, 2]
    for job in (0, 1):
        assert sorted(job_epochs(workdir, job).values()) == [2, 2] and \
            {k.split("/")[0] for k in job_epochs(workdir, job)} == {"machine0", "machine1"}, job_epochs(workdir, job)
    logs = sorted(text for text, _ in out)
    assert sum("the sweep is over: 2 jobs followed" in t for t in logs) == 1, "one node followed"
    assert sum(f"compare its runs: python -m imgexp.compare sweep={parent.info.run_id}" in t for t in logs) == 1


@pytest.mark.slow
def test_an_optuna_study_of_trials_over_two_nodes_prunes_on_every_rank(workdir):
    """A 2-trial study in a journal file, each trial over both nodes: the lr that cannot learn is pruned, and
    the rank on the other machine stops at the epoch where rank 0 did."""
    import optuna
    from optuna.trial import TrialState

    journal = workdir / "study.journal"
    finish(start_nodes(workdir, node_command(
        workdir, free_port(), "hydra/sweeper=optuna", "hydra.sweeper.study_name=nodes", f"hydra.sweeper.storage=journal://{journal}",
        "hydra.sweeper.n_trials=2", "hydra.sweeper.pruner=median", "hydra.sweeper.pruner_startup_trials=1",
        "hydra.sweeper.sampler=grid", "hydra.sweeper.seed=1", "optimizer.lr=choice(0.003,1e-9)", "epochs=3", sweep=True)))
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    study = optuna.load_study(study_name="nodes", storage=JournalStorage(JournalFileBackend(str(journal))))
    assert [(t.params["optimizer.lr"], t.state) for t in study.trials] == [(0.003, TrialState.COMPLETE),
                                                                           (1e-9, TrialState.PRUNED)]
    client, found = the_runs(workdir)
    trials = {int(r.data.tags["imgexp.trial"]): r for r in found if "imgexp.trial" in r.data.tags}
    assert sorted(trials) == [0, 1] and len(found) == 3, "one run per trial, and the study's parent"
    assert trials[1].data.tags["imgexp.status"] == "pruned"
    for number, run in trials.items():
        epochs = len(client.get_metric_history(run.info.run_id, "val/acc"))
        assert list(job_epochs(workdir, number).values()) == [epochs, epochs], (number, job_epochs(workdir, number))
        assert {k.split("/")[0] for k in job_epochs(workdir, number)} == {"machine0", "machine1"}
    assert len(client.get_metric_history(trials[1].info.run_id, "val/acc")) < 3


@pytest.mark.slow
def test_a_node_that_runs_another_sweep_than_the_leader_is_one_line(workdir):
    port = free_port()
    leader = subprocess.Popen(node_command(workdir, port, "seed=0,1", "trainer.rendezvous_timeout_s=10", sweep=True),
                              cwd=workdir, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while True:  # the leader's store listens: the other node cannot lead instead, however slowly the leader started
        assert leader.poll() is None and time.monotonic() < deadline, leader.communicate()[1][-2000:]
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            time.sleep(0.1)
    other = subprocess.run(node_command(workdir, port, "seed=0,2", "trainer.rendezvous_timeout_s=10", sweep=True),
                           cwd=workdir, env=env(), capture_output=True, text=True, timeout=120)
    leader.communicate(timeout=300)
    lines = [line for line in other.stderr.splitlines() if line.strip() and "mlflow.store.db" not in line]
    assert other.returncode == 1 and lines == [
        f"imgexp: error: trainer.rendezvous: the node leading the sweep at 127.0.0.1:{port} runs another sweep: start "
        "the same command on every node"], other.stderr[-2000:]


@pytest.mark.slow
@pytest.mark.parametrize("where, nodes_started", [("no-such-host.invalid:29400", 2), ("127.0.0.1:{port}", 1)])
def test_a_rendezvous_no_node_reaches_or_a_missing_node_is_one_line_in_bounded_time(workdir, where, nodes_started):
    cmd = [sys.executable, "-m", "imgexp", *FAST, "trainer.nodes=2", f"trainer.rendezvous={where.format(port=free_port())}",
           "trainer.rendezvous_timeout_s=5", "tracking=none"]
    began = time.monotonic()
    procs = [subprocess.Popen(cmd, cwd=workdir, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(nodes_started)]
    for proc in procs:
        _, err = proc.communicate(timeout=180)
        assert proc.returncode == 1
        lines = [line for line in err.strip().splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("imgexp: error: trainer.rendezvous:"), err[-2000:]
    assert time.monotonic() - began < 120


@pytest.mark.parametrize("overrides, key", [(["trainer.nodes=2"], "trainer.rendezvous"),
                                            (["trainer.nodes=2", "trainer.rendezvous=host"], "trainer.rendezvous"),
                                            (["trainer.nodes=0"], "trainer.nodes")])
def test_nodes_need_a_rendezvous_of_host_and_port(compose_cfg, overrides, key):
    from imgexp.config import ConfigError, validate

    with pytest.raises(ConfigError) as err:
        validate(compose_cfg(*overrides))
    assert str(err.value).startswith(key), str(err.value)
