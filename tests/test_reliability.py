"""Faults and bad input: nothing logged is lost, nothing is silently wrong. Concurrent runs, signals, a
killed process, odd and unreadable images, a tracking server that is missing, read-only or goes away,
and values that name their key."""
from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import pytest
import torch
from mlflow import MlflowClient
from PIL import Image

from imgexp.checkpoint import load
from imgexp.config import ConfigError
from imgexp.data import build as build_data
from imgexp.models import create_model
from imgexp.run import run
from imgexp.tracking.store import download_best_weights

from conftest import run_cli, write_image
from slurm_cluster import free_port
from test_resume import env, runs, start, wait_for

FAST = ["progress=false", "analysis=none"]


# ------------------------------------------------------------------ concurrent runs
@pytest.mark.slow
def test_two_runs_started_together_in_a_fresh_directory(workdir, compose_cfg):
    procs = [start(["epochs=2", *FAST, *extra], workdir) for extra in ([], ["optimizer.lr=1e-7"])]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-2000:]  # neither dies creating the SQLite store
    client, both = runs(workdir)
    assert len(both) == 2 and {r.info.status for r in both} == {"FINISHED"}
    dirs = {r.data.tags["imgexp.checkpoint_dir"] for r in both}
    assert len(dirs) == 2 and all(r.info.run_id in r.data.tags["imgexp.checkpoint_dir"] for r in both)
    cfg = compose_cfg("device=cpu")
    data = build_data(cfg.data, cfg.augmentation, cfg.normalization, cfg.batch, cfg.seed, torch.device("cpu"))
    x, y = (torch.cat(t) for t in zip(*data.test))
    for r in both:  # each run's logged test accuracy is that of its own checkpoint artifact
        model = create_model(cfg.model, data.info).eval()
        model.load_state_dict(load(download_best_weights(client, r.info.run_id, workdir / r.info.run_id)))
        with torch.no_grad():
            acc = (model(x).argmax(1) == y).float().mean().item()
        assert acc == pytest.approx(r.data.metrics["test/acc"])
    lr = {r.data.params["optimizer.lr"]: r.data.metrics["test/acc"] for r in both}
    assert lr["0.001"] > 0.8 > lr["1e-07"]


# ------------------------------------------------------------------ signals and killed processes
@pytest.mark.slow
def test_ctrl_c_stops_with_one_line_and_a_resumable_run(workdir):
    proc = start(["epochs=4", "batch=16", *FAST], workdir)
    wait_for("outputs/*/*/checkpoints/*/last.pt", workdir, proc)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert "Traceback" not in err and err.strip().splitlines()[-1].startswith("imgexp: stopped by SIGINT")
    _, (r,) = runs(workdir)
    assert r.info.status == "KILLED" and r.data.tags["imgexp.status"] == "interrupted"


@pytest.mark.slow
def test_sigterm_while_drawing_plots_ends_killed_with_one_line(workdir):
    proc = start(["epochs=1", "progress=false", "analysis=full"], workdir)  # minutes of plots after training
    deadline = time.time() + 120
    while not (workdir / "mlflow.db").exists() or "test/acc" not in metric_keys(workdir):
        assert proc.poll() is None and time.time() < deadline
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143 and "Traceback" not in err
    assert err.strip().splitlines()[-1] == "imgexp: stopped by SIGTERM"
    _, (r,) = runs(workdir)
    assert r.info.status == "KILLED" and "test/acc" in r.data.metrics  # what was logged is kept


def metric_keys(workdir: Path) -> set[str]:
    import sqlite3

    with sqlite3.connect(workdir / "mlflow.db") as db:
        try:
            return {k for (k,) in db.execute("select distinct key from metrics")}
        except sqlite3.OperationalError:  # tables not created yet
            return set()


@pytest.mark.slow
def test_a_killed_process_run_is_closed_by_the_next_run(workdir):
    proc = start(["epochs=4", "batch=16", *FAST], workdir)
    wait_for("outputs/*/*/checkpoints/*/last.pt", workdir, proc)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert runs(workdir)[1][0].info.status == "RUNNING"
    assert run_cli("epochs=1", *FAST, cwd=workdir).returncode == 0
    _, (lost, new) = runs(workdir)
    assert lost.info.status == "KILLED" and lost.data.tags["imgexp.status"] == "lost"
    assert "ended without closing the run" in lost.data.tags["imgexp.error"] and new.info.status == "FINISHED"


# ------------------------------------------------------------------ odd and unreadable images
def folder_data(compose_cfg, root: Path, tmp_path: Path, *overrides: str):
    cfg = compose_cfg("data=imagefolder", f"data.root={root}", f"data.cache_dir={tmp_path / 'cache'}",
                      "data.num_workers=0", "device=cpu", *overrides)
    return build_data(cfg.data, cfg.augmentation, cfg.normalization, cfg.batch, cfg.seed, torch.device("cpu"))


@pytest.mark.slow
def test_size_and_channels_come_from_the_majority(compose_cfg, tmp_path, caplog):
    root = tmp_path / "tree"
    for label, name in enumerate(["ant", "bee", "cow"]):
        for i in range(1, 9):
            write_image(root / name / f"{i}.png", label, size=16)
    write_image(root / "ant" / "0_grey.png", 0, size=16, mode="L")  # sorts first
    Image.new("RGB", (1, 1), (20, 20, 20)).save(root / "ant" / "00_tiny.png")  # sorts before it
    with caplog.at_level(logging.INFO):
        data = folder_data(compose_cfg, root, tmp_path)
    assert (data.info.channels, data.info.height, data.info.width) == (3, 16, 16)
    assert "converted 2 of 26 images to 3x16x16" in caplog.text
    data = folder_data(compose_cfg, root, tmp_path, "data.image_size=8", "data.channels=1")
    assert (data.info.channels, data.info.height) == (1, 8)


def test_unreadable_files_and_odd_folders_are_left_out_and_named(compose_cfg, tmp_path, caplog):
    root = tmp_path / "tree"
    for label, name in enumerate(["ant", "bee", "cow"]):
        for i in range(1, 9):
            write_image(root / name / f"{i}.png", label, size=16)
    (root / "ant" / "0_corrupt.png").write_bytes(b"not an image")  # sorts first
    good = (root / "bee" / "1.png").read_bytes()
    (root / "bee" / "0_truncated.png").write_bytes(good[: len(good) // 2])
    os.symlink("loop_b.png", root / "cow" / "loop_a.png")
    os.symlink("loop_a.png", root / "cow" / "loop_b.png")
    (root / "deer").mkdir()  # no images
    os.symlink(root / "ant", root / "ant_again")  # a link to a class folder
    (root / "eel").mkdir()
    for i in range(3):
        (root / "eel" / f"{i}.png").write_bytes(b"broken")  # a class whose every image is unreadable
    with caplog.at_level(logging.INFO):
        data = folder_data(compose_cfg, root, tmp_path)
    assert data.info.class_names == ["ant", "bee", "cow"]
    text = caplog.text
    assert "links to directories: ant_again" in text and "folders without images: deer" in text
    assert "skipped 2 empty image files or broken links" in text  # the looping links
    assert "skipped 5 unreadable image files of 29" in text  # corrupt, truncated and eel's three
    assert "left out classes with no readable training image: eel" in text
    x = torch.cat([b[0] for b in data.train])
    assert x.shape[1:] == (3, 16, 16) and len(x) > 0

    (root / "train").mkdir()  # imagenet_subset naming a class without images is an error
    for name in ("ant", "deer"):
        os.symlink(root / name, root / "train" / name)
    cfg = compose_cfg("data=imagenet_subset", f"data.root={root}", "data.classes=[ant,deer]")
    with pytest.raises(ConfigError, match=r"data.classes: deer: no images in"):
        build_data(cfg.data, cfg.augmentation, cfg.normalization, cfg.batch, cfg.seed, torch.device("cpu"))


# ------------------------------------------------------------------ the tracking store
@pytest.mark.slow
def test_unreachable_server_fails_fast_before_loading_data(workdir):
    uri = f"http://127.0.0.1:{free_port()}"
    began = time.monotonic()
    proc = run_cli("epochs=1", *FAST, f"tracking.uri={uri}", cwd=workdir)
    assert time.monotonic() - began < 15
    assert proc.returncode == 1 and "data digits" not in proc.stdout
    assert proc.stderr.strip().splitlines()[-1].startswith(f"imgexp: error: tracking.uri: no MLflow server answers at {uri}")


@pytest.mark.slow
def test_read_only_store_fails_fast(workdir):
    db = workdir / "mlflow.db"
    db.write_bytes(b"")
    if subprocess.run(["chattr", "+i", str(db)], capture_output=True).returncode != 0:
        pytest.skip("chattr +i is not permitted here")
    try:
        began = time.monotonic()
        proc = run_cli("epochs=1", *FAST, cwd=workdir)
        assert time.monotonic() - began < 15
    finally:
        subprocess.run(["chattr", "-i", str(db)])
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1] == (f"imgexp: error: tracking.uri: {db} is read-only: the MLflow "
                                                    f"store sqlite:///{db} cannot be written")


def test_writers_of_the_same_new_tags_to_one_run_at_once_all_succeed(workdir):
    """(Threads, each with its own store connection, stand in for processes.) A study's workers all write to its parent run (heartbeats, the summary when each ends): a tag's first
    write by two of them at once must not fail one with the store's unique constraint (it did through
    ``client.set_tag``, about 1 write in 120 here, and ended a worker of a 3-worker study in CI)."""
    import threading

    from imgexp.tracking.store import set_tags

    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    run_id = client.create_run(client.create_experiment("shared")).info.run_id
    start, errors = threading.Barrier(4), []

    def worker(n: int) -> None:
        start.wait()
        for k in range(100):
            try:
                set_tags(client, run_id, {f"best.p{k}": str(k), "imgexp.heartbeat": str(n)})
            except Exception as err:  # noqa: BLE001 - what the test counts
                errors.append(str(err)[:200])

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    tags = client.get_run(run_id).data.tags
    assert {f"best.p{k}": str(k) for k in range(100)}.items() <= tags.items() and tags["imgexp.heartbeat"] in {"0", "1", "2", "3"}


class Server:
    """A local ``mlflow server`` (SQLite, served artifacts) that can be stopped and started again."""

    def __init__(self, folder: Path) -> None:
        self.folder, self.port, self.proc = folder, free_port(), None
        self.uri = f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(self.port),
             "--workers", "1", "--backend-store-uri", f"sqlite:///{self.folder / 'server.db'}",
             "--artifacts-destination", str(self.folder / "artifacts")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return
            except OSError:
                time.sleep(0.3)
        raise RuntimeError("mlflow server did not start")

    def stop(self, meanwhile: Callable[[], object] = lambda: None) -> None:
        """SIGTERM, then ``meanwhile`` (e.g. let held clients go: the server finishes their requests), then
        wait for it to end."""
        if self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        meanwhile()
        self.proc.wait(timeout=30)


@pytest.mark.slow
def test_tracking_server_away_during_the_run_loses_nothing(workdir, monkeypatch):
    """Two runs against one server that goes down in their second epoch: run a waits for it to come back
    (4 s later) and ends FINISHED with nothing missing; run b (offline_wait_s=0) ends while it is still
    down, with one line naming the spool and the command that sends it."""
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # a refused call fails at once, not after backoff
    server = Server(workdir)
    server.start()
    for name in ("a", "b"):
        (workdir / name).mkdir()
    try:
        a, b = ((workdir / name, start(["epochs=6", "batch=16", *FAST, f"tracking.uri={server.uri}",
                                        f"tracking.experiment={name}", *extra], workdir / name))
                for name, extra in (("a", []), ("b", ["tracking.offline_wait_s=0"])))
        hold_after_epoch_1([a, b])  # neither can end before the outage, however far apart they started
        server.stop(meanwhile=lambda: [os.kill(proc.pid, signal.SIGCONT) for _, proc in (a, b)])
        out, err = b[1].communicate(timeout=300)
        assert b[1].returncode == 0, err[-2000:]
        line = next(x for x in out.splitlines() if "still unreachable" in x)
        command = line.split("send them with: ")[1].split()
        time.sleep(4)
        server.start()
        out, err = a[1].communicate(timeout=300)
        assert a[1].returncode == 0, err[-2000:]
        check_complete(MlflowClient(server.uri), "a")
        assert (out + err).count("unreachable (") == 1  # one line for the outage
        assert not list(a[0].glob("outputs/*/*/mlflow_spool")), "the spool goes once everything is sent"
        sent = subprocess.run([sys.executable, *command[1:]], capture_output=True, text=True, env=env(), timeout=120)
        assert sent.returncode == 0, sent.stderr[-2000:]
        check_complete(MlflowClient(server.uri), "b")
        assert not list(b[0].glob("outputs/*/*/mlflow_spool"))
    finally:
        server.stop()


def hold_after_epoch_1(jobs: list[tuple[Path, subprocess.Popen]], timeout: float = 120) -> None:
    """SIGSTOP each job as soon as it has saved epoch 1 (its ``last.pt``); return once all are stopped."""
    waiting, deadline = dict(jobs), time.time() + timeout
    try:
        while waiting:
            for cwd, proc in list(waiting.items()):
                assert proc.poll() is None, proc.communicate()[1][-2000:]
                if list(cwd.glob("outputs/*/*/checkpoints/*/last.pt")):
                    os.kill(proc.pid, signal.SIGSTOP)
                    del waiting[cwd]
            assert time.time() < deadline, f"epoch 1 not saved after {timeout} s"
            time.sleep(0.05)
    except BaseException:
        for _, proc in jobs:  # none is left stopped for good
            proc.kill()
        raise


def check_complete(client: MlflowClient, experiment: str) -> None:
    (r,) = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    assert r.info.status == "FINISHED"
    steps = sorted(m.step for m in client.get_metric_history(r.info.run_id, "val/acc"))
    assert steps == [1, 2, 3, 4, 5, 6]
    assert {"test/acc", "test/f1_macro", "val/best_epoch"} <= set(r.data.metrics)
    files = {a.path for d in ("", "checkpoints", "plots", "metrics") for a in client.list_artifacts(r.info.run_id, d)}
    assert {"config.yaml", "plots/learning_curves.png",
            "plots/confusion_matrix.png", "metrics/per_class.csv", "metrics/confusion_matrix.csv"} <= files
    # the best weights once: checkpoints/best.pt, or (the model logged) the logged model's copy
    assert ("checkpoints/best.pt" in files) != ("imgexp.best_weights" in r.data.tags)
    assert "checkpoints/last.pt" not in files  # tracking.checkpoints=best: last.pt was there to resume from


# ------------------------------------------------------------------ bad values
@pytest.mark.parametrize("overrides,message", [
    (["+unknown_key=1"], r"^unknown_key: unknown key; the config has analysis, "),
    (["+model.widthz=[8]"], r"^model.widthz: unknown key; model has dense, "),
    (["data.image_size=1"], r"^data.image_size: 1x1 images are too small for small_cnn"),
    (["topk=50"], r"^topk: 50 is more than the data's 10 classes"),
    (["model.weights=WEIGHTS"], r"^model.weights: .*weights.pt is not a PyTorch checkpoint"),
])
def test_bad_values_name_their_key(compose_cfg, workdir, overrides, message):
    (workdir / "weights.pt").write_text("not a checkpoint")
    overrides = [o.replace("WEIGHTS", str(workdir / "weights.pt")) for o in overrides]
    cfg = compose_cfg("epochs=1", "device=cpu", *FAST, *overrides)
    with pytest.raises(ConfigError, match=message):
        run(cfg, workdir / "out")
    if overrides[0].startswith("+"):
        assert not (workdir / "mlflow.db").exists(), "validated before the tracking store was opened"
