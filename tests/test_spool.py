"""The tracking spool (imgexp.tracking.spool) in-process: operations kept in order while the server is down,
sent oldest first, an outage midway resumed where it stopped, and the command that sends a spool later."""
from __future__ import annotations

import json

import pytest
from mlflow import MlflowClient

from imgexp.tracking.spool import Spool, main


class Outage(Exception):
    pass


class FailsAfter:
    """A client whose server goes down after ``n`` calls."""

    def __init__(self, client: MlflowClient, n: int) -> None:
        self.client, self.left = client, n

    def __getattr__(self, name):
        def call(*args, **kwargs):
            if self.left == 0:
                raise Outage("connection refused")
            self.left -= 1
            return getattr(self.client, name)(*args, **kwargs)

        return call


@pytest.fixture
def store(tmp_path):
    """A tracking store with one RUNNING run, and a spool of it: two epochs, an artifact written twice,
    tags, and the run's end."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    run_id = client.create_run(client.create_experiment("e", str(tmp_path / "artifacts"))).info.run_id
    spool = Spool(tmp_path / "spool", uri, run_id)
    plot = tmp_path / "curves.txt"
    for epoch in (1, 2):
        spool.append({"op": "metrics", "metrics": {"val/acc": 0.5 + epoch / 10}, "step": epoch, "ts": 1000 + epoch})
        plot.write_text(f"epoch {epoch}")
        spool.keep_file(plot, "plots")  # copied now: the file changes before it is sent
    spool.append({"op": "tags", "tags": {"imgexp.status": "finished"}})
    spool.append({"op": "end", "status": "FINISHED"})
    return client, run_id, spool, tmp_path


def sent_as_logged(client: MlflowClient, run_id: str, tmp_path) -> None:
    run = client.get_run(run_id)
    assert [(m.step, m.value) for m in client.get_metric_history(run_id, "val/acc")] == [(1, 0.6), (2, 0.7)]
    assert run.data.tags["imgexp.status"] == "finished" and run.info.status == "FINISHED"
    plot = client.download_artifacts(run_id, "plots/curves.txt", str(tmp_path / "down"))
    assert open(plot).read() == "epoch 2"  # the newest copy


def test_a_spool_is_sent_in_order_and_an_outage_midway_resumes_where_it_stopped(store):
    client, run_id, spool, tmp_path = store
    assert spool.pending() == 6 and json.loads((tmp_path / "spool" / "spool.json").read_text())["sent"] == 0
    with pytest.raises(Outage):
        spool.send(FailsAfter(client, 2))
    # epoch 1's metrics, the plot's first copy (skipped: only the newest copy is sent), epoch 2's metrics
    assert spool.pending() == 3 and [m.step for m in client.get_metric_history(run_id, "val/acc")] == [1, 2]
    reopened = Spool.open(tmp_path / "spool")  # what was sent is recorded: a later send goes on from there
    assert reopened.send(client) == 3 and reopened.pending() == 0
    sent_as_logged(client, run_id, tmp_path)
    reopened.discard()
    assert not (tmp_path / "spool").exists()


def test_the_spool_command_sends_to_the_runs_server_or_another(store, capsys, tmp_path, monkeypatch):
    client, run_id, spool, _ = store
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    with pytest.raises(SystemExit) as code:
        main([str(spool.folder), "--uri", "http://user:s3cret@127.0.0.1:9"])  # nothing listens on port 9
    out = capsys.readouterr()
    assert code.value.code == 1 and "s3cret" not in out.err
    assert out.err.startswith("imgexp: error: http://user:***@127.0.0.1:9: ") and "(6 operations still spooled)" in out.err
    main([str(spool.folder)])
    assert capsys.readouterr().out == f"sent 6 of 6 spooled operations of run {run_id} to {spool.meta['uri']}\n"
    sent_as_logged(client, run_id, tmp_path)
    assert not spool.folder.exists()
