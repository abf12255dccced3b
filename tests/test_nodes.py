"""One run over several machines (trainer.nodes, trainer.rendezvous): here two "nodes" are two processes on
127.0.0.1, each in its own working directory, gloo on the CPU, sharing one MLflow store as machines would share
a tracking server."""
from __future__ import annotations

import glob
import os
import re
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


def node_command(workdir: Path, port: int, *extra: str) -> list[str]:
    return [sys.executable, "-m", "imgexp", *FAST, "trainer.nodes=2", f"trainer.rendezvous=127.0.0.1:{port}",
            f"tracking.uri=sqlite:///{workdir / 'mlflow.db'}", "tracking.experiment=nodes", *extra]


def start_nodes(workdir: Path, cmd: list[str], **environ: str) -> list[subprocess.Popen]:
    nodes = []
    for k in range(2):
        (workdir / f"machine{k}").mkdir(exist_ok=True)
        nodes.append(subprocess.Popen(cmd, cwd=workdir / f"machine{k}", env=env(**environ), stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True))
    return nodes


def finish(nodes: list[subprocess.Popen], timeout: float = 400) -> list[tuple[str, str]]:
    out = [n.communicate(timeout=timeout) for n in nodes]
    for n, (_, err) in zip(nodes, out):
        assert n.returncode == 0, err[-3000:]
    return out


def the_runs(workdir: Path):
    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("nodes")
    return client, client.search_runs([experiment.experiment_id])


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
