"""No password from a URI reaches MLflow (params, tags, run names, artifacts), a log line, the terminal or a
file imgexp writes (issue 20, item 7); an unreachable database store fails with one line within seconds."""
from __future__ import annotations

import glob
import io
import logging
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient

from conftest import run_cli
from imgexp.config import ConfigError
from imgexp.errors import describe
from imgexp.redact import RedactFilter, install, mask, mask_container, mask_files
from imgexp.tracking.store import check_database
from imgexp.tracking.tracker import MlflowTracker

SECRET = "s3cret"
FAST = ["epochs=1", "progress=false", "analysis=none", "data.subset=200"]

MASKED = [
    ("postgresql://u:s3cret@h:5432/db", "postgresql://u:***@h:5432/db"),
    ("postgresql+psycopg://u:s3cret%40x@h/db", "postgresql+psycopg://u:***@h/db"),
    ("mysql+pymysql://root:s3cret@db.example.org:3306/mlflow", "mysql+pymysql://root:***@db.example.org:3306/mlflow"),
    ("mssql+pyodbc://sa:s3cret@h/db?driver=x", "mssql+pyodbc://sa:***@h/db?driver=x"),
    ("http://u:s3cret@h:5000", "http://u:***@h:5000"),
    ("https://u:s3cret@mlflow.example.org/", "https://u:***@mlflow.example.org/"),
    ("postgresql://:s3cret@h/db", "postgresql://:***@h/db"),
    ("postgresql://u:s3/cret@h/db", "postgresql://u:***@h/db"),  # a raw / or @ in the password
    ("postgresql://u:s3@cret@h/db", "postgresql://u:***@h/db"),
    ("postgresql://u:s3cret@h/db?x=a@b", "postgresql://u:***@h/db?x=a@b"),
    ("tracking.uri=postgresql://u:s3cret@h/db", "tracking.uri=postgresql://u:***@h/db"),
    ("'tracking.uri=postgresql://u:s3cret@h/db'", "'tracking.uri=postgresql://u:***@h/db'"),
    ('"postgresql://u:s3cret@h/db"', '"postgresql://u:***@h/db"'),
    (r"tracking.uri=postgresql\://u\:s3cret@h/db", r"tracking.uri=postgresql\://u\:***@h/db"),  # as Hydra escapes
    ("a postgresql://u:s3cret@h/db b http://v:s3cret@g:5000/x c",
     "a postgresql://u:***@h/db b http://v:***@g:5000/x c"),
    ("  uri: postgresql://u:s3cret@h/db\n  experiment: x\n", "  uri: postgresql://u:***@h/db\n  experiment: x\n"),
]
UNCHANGED = ["postgresql://u@h/db", "postgresql+psycopg:///optuna", "sqlite:////abs/path/mlflow.db",
             "sqlite:///mlflow.db", "http://127.0.0.1:5000", "http://h:5000/#/experiments/1/runs/2?view=x",
             "ssh://git@host:22/repo", "user@host", "a:b@c", "no uri here", "postgresql://u:***@h/db"]


@pytest.mark.parametrize("text,masked", MASKED)
def test_mask_hides_the_password(text, masked):
    assert mask(text) == masked
    assert mask(masked) == masked


@pytest.mark.parametrize("text", UNCHANGED)
def test_mask_leaves_uris_without_password(text):
    assert mask(text) == text


def test_mask_in_containers_files_and_errors(tmp_path):
    config = {"tracking": {"uri": "postgresql://u:s3cret@h/db", "n": 1}, "l": ["x", "http://u:s3cret@h"]}
    assert SECRET not in repr(mask_container(config)) and config["tracking"]["n"] == 1
    (tmp_path / "overrides.yaml").write_text("- tracking.uri=postgresql://u:s3cret@h/db\n")
    (tmp_path / "other.yaml").write_text("x: 1\n")
    mask_files(tmp_path)
    assert (tmp_path / "overrides.yaml").read_text() == "- tracking.uri=postgresql://u:***@h/db\n"
    assert (tmp_path / "other.yaml").read_text() == "x: 1\n"
    assert SECRET not in describe(ConfigError("tracking.uri", "cannot connect to postgresql://u:s3cret@h/db"))


def test_log_records_are_masked():
    """On a handler (message, arguments, traceback), and for handlers added after install()."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(RedactFilter())
    logger = logging.getLogger("imgexp.test_secrets")
    logger.addHandler(handler)
    try:
        logger.warning("store %s", "postgresql://u:s3cret@h/db")
        try:
            raise RuntimeError("cannot reach http://u:s3cret@h:5000")
        except RuntimeError:
            logger.exception("failed")
    finally:
        logger.removeHandler(handler)
    assert "postgresql://u:***@h/db" in stream.getvalue() and "http://u:***@h:5000" in stream.getvalue()
    assert SECRET not in stream.getvalue()

    factory = logging.getLogRecordFactory()
    later = io.StringIO()
    child = logging.getLogger("imgexp.test_secrets.later")
    child.propagate = False
    try:
        install()
        install()  # idempotent
        child.addHandler(logging.StreamHandler(later))  # e.g. MLflow's own, made when it is imported
        child.warning("#0 : tracking.uri=postgresql\\://u\\:s3cret@h/db")
    finally:
        logging.setLogRecordFactory(factory)
        child.handlers.clear()
    assert SECRET not in later.getvalue() and "u\\:***@h/db" in later.getvalue()


def test_where_and_spool_hide_the_password(tmp_path):
    class Client:
        def get_run(self, run_id):
            raise ConnectionError("gone")

    tracker = MlflowTracker(Client(), "r1", "http://u:s3cret@h:5000", tmp_path / "spool")
    tracker.spool.append({"op": "tags", "tags": {}})
    assert tracker.where() == "MLflow run r1 in http://u:***@h:5000"
    assert SECRET not in "".join(p.read_text() for p in (tmp_path / "spool").iterdir())


# ------------------------------------------------------------------ real runs
def leaks(root: Path) -> list[str]:
    """Every file under ``root`` (outputs, multirun, .hydra, logs, mlflow.db, artifacts, checkpoints)
    holding the secret."""
    return [str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and SECRET.encode() in p.read_bytes()]


def mlflow_leaks(workdir: Path) -> list[str]:
    """Params, tags, run names and artifacts of every run in the store holding the secret."""
    client = MlflowClient(f"sqlite:///{workdir}/mlflow.db")
    found, runs = [], client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert runs
    for run in runs:
        values = {**run.data.params, **run.data.tags, "run name": run.info.run_name or ""}
        found += [f"{run.info.run_id} {k}" for k, v in values.items() if SECRET in v]
        local = Path(client.download_artifacts(run.info.run_id, "", str(workdir / "downloaded" / run.info.run_id)))
        found += [f"{run.info.run_id} artifact {p.name}" for p in local.rglob("*")
                  if p.is_file() and SECRET.encode() in p.read_bytes()]
    return found


@pytest.mark.slow
def test_run_writes_no_password(workdir):
    """A password-bearing URI in an override and a free string config value, and one in a failing run's
    error: not in MLflow, the output (.hydra/, log), the checkpoints, stdout or stderr."""
    uri = f"postgresql://u:{SECRET}@127.0.0.1:1/db"
    proc = run_cli(f"tracking.run_name='{uri}'", *FAST, cwd=workdir)  # quoted; the sweep's is not
    assert proc.returncode == 0, proc.stderr
    failed = run_cli(f"model.weights=/nowhere/{uri}", *FAST, cwd=workdir)
    assert failed.returncode == 1
    assert failed.stderr.strip().splitlines()[-1].startswith("imgexp: error: model.weights: cannot load /nowhere/"
                                                             "postgresql://u:***@127.0.0.1:1/db")
    hydra_files = list(workdir.glob("outputs/*/*/.hydra/overrides.yaml"))
    assert len(hydra_files) == 2 and all("u:***@127.0.0.1" in f.read_text() for f in hydra_files)
    assert list(workdir.glob("outputs/*/*/*.log"))
    for out in (proc, failed):
        assert SECRET not in out.stdout + out.stderr
    assert mlflow_leaks(workdir) == []
    assert leaks(workdir) == []


@pytest.mark.slow
def test_grid_sweep_writes_no_password(workdir):
    """Two jobs: multirun.yaml, the launcher's '#0 : ...' lines, each job's .hydra/ and log, the parent run."""
    proc = run_cli("-m", "seed=0,1", f"tracking.run_name=postgresql://u:{SECRET}@h/db", *FAST, cwd=workdir)
    assert proc.returncode == 0, proc.stderr
    assert "#1 : " in proc.stdout and "postgresql\\://u\\:***@h/db" in proc.stdout  # as Hydra escapes it
    sweep = next(workdir.glob("multirun/*/*"))
    assert "u:***@h/db" in (sweep / "multirun.yaml").read_text()
    assert len(list(sweep.glob("*/*.log"))) == 2
    assert SECRET not in proc.stdout + proc.stderr
    assert mlflow_leaks(workdir) == []
    assert leaks(workdir) == []


@pytest.fixture
def postgres_with_password():
    """A throwaway PostgreSQL server (Debian's package) on a free local port that asks for a password
    (scram-sha-256), with databases mlflow and optuna; yields (bin folder, port)."""
    bins = sorted(glob.glob("/usr/lib/postgresql/*/bin"))
    if not bins:
        pytest.skip("PostgreSQL is not installed (apt-get install postgresql)")
    import psycopg

    data = tempfile.mkdtemp(prefix="imgexp-pg-")
    as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    password_file = Path(data) / "password"
    password_file.write_text(SECRET)
    if as_postgres:
        shutil.chown(data, "postgres")
        shutil.chown(password_file, "postgres")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    subprocess.run([*as_postgres, f"{bins[-1]}/initdb", "-D", f"{data}/db", "-A", "scram-sha-256", "-U", "postgres",
                    f"--pwfile={password_file}"], check=True, capture_output=True)
    subprocess.run([*as_postgres, f"{bins[-1]}/pg_ctl", "-D", f"{data}/db", "-w", "-l", f"{data}/log", "-o",
                    f"-p {port} -k {data} -c listen_addresses=127.0.0.1", "start"], check=True, capture_output=True)
    try:
        with psycopg.connect(f"postgresql://postgres:{SECRET}@127.0.0.1:{port}/postgres", autocommit=True) as conn:
            conn.execute("CREATE DATABASE mlflow")
            conn.execute("CREATE DATABASE optuna")
        yield bins[-1], port
    finally:
        subprocess.run([*as_postgres, f"{bins[-1]}/pg_ctl", "-D", f"{data}/db", "-m", "immediate", "stop"],
                       capture_output=True)
        shutil.rmtree(data, ignore_errors=True)


@pytest.mark.slow
def test_postgresql_stores_with_a_password(workdir, postgres_with_password):
    """The issue's case: MLflow and the Optuna study on PostgreSQL, the password in both URIs. The sweep
    runs; no copy of the password is in either database, a file, stdout or stderr."""
    bin_dir, port = postgres_with_password
    tracking = f"postgresql://postgres:{SECRET}@127.0.0.1:{port}/mlflow"
    storage = f"postgresql+psycopg://postgres:{SECRET}@127.0.0.1:{port}/optuna"
    proc = run_cli("-m", "hydra/sweeper=optuna", f"hydra.sweeper.storage={storage}", "hydra.sweeper.n_trials=1",
                   "optimizer.lr=tag(log,interval(1e-4,1e-1))", f"tracking.uri={tracking}", *FAST, cwd=workdir)
    assert proc.returncode == 0, proc.stderr
    assert "see it with: mlflow ui --backend-store-uri postgresql://postgres:***@127.0.0.1" in proc.stdout
    assert SECRET not in proc.stdout + proc.stderr
    assert leaks(workdir) == []
    env = {**os.environ, "PGPASSWORD": SECRET}
    for db in ("mlflow", "optuna"):
        dump = subprocess.run([f"{bin_dir}/pg_dump", "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", db],
                              env=env, capture_output=True, text=True, check=True).stdout
        assert SECRET not in dump, db
        assert db == "optuna" or "trial.storage\tpostgresql+psycopg://postgres:***@127.0.0.1" in dump
    with pytest.raises(ConfigError, match="password authentication failed") as err:  # a wrong password
        check_database(tracking.replace(SECRET, "wrong"), "tracking.uri")
    assert "wrong" not in str(err.value)


# ------------------------------------------------------------------ an unreachable database store
def test_check_database_fails_at_once_naming_the_key():
    began = time.monotonic()
    with pytest.raises(ConfigError) as err:
        check_database(f"postgresql://u:{SECRET}@127.0.0.1:1/db", "tracking.uri")
    assert time.monotonic() - began < 10
    assert str(err.value).startswith("tracking.uri: cannot connect to postgresql://u:***@127.0.0.1:1/db: ")
    assert SECRET not in str(err.value)
    check_database("sqlite:///x.db", "tracking.uri")  # not a database server: nothing to check
    check_database("http://127.0.0.1:1", "tracking.uri")


UNREACHABLE = f"postgresql://u:{SECRET}@127.0.0.1:1/db"  # port 1: nothing listens


@pytest.mark.slow
@pytest.mark.parametrize("how", ["override", "environment", "optuna"])
def test_unreachable_database_is_one_line_within_seconds(tmp_path, how):
    """Before: MLflow and SQLAlchemy retried for about 113 s. Measured after: about 6-8 s a process,
    mostly its imports."""
    args = list(FAST)
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "HYDRA_FULL_ERROR")}
    key = "tracking.uri"
    if how == "override":
        args.append(f"tracking.uri={UNREACHABLE}")
    elif how == "environment":
        env["MLFLOW_TRACKING_URI"] = UNREACHABLE
    else:
        key = "hydra.sweeper.storage"
        args = ["-m", "hydra/sweeper=optuna", f"hydra.sweeper.storage={UNREACHABLE}", "hydra.sweeper.n_trials=1",
                "optimizer.lr=tag(log,interval(1e-4,1e-1))", *args]
    began = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "imgexp", *args], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=120)
    elapsed = time.monotonic() - began
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 1
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"imgexp: error: {key}: cannot connect to postgresql://u:***@127.0.0.1:1/db: ")
    assert elapsed < 30, elapsed
    assert SECRET not in proc.stdout + proc.stderr
    assert leaks(tmp_path) == []


def test_resume_compares_the_config_with_its_masked_record(compose_cfg):
    """The checkpoint records the config with passwords masked: a URI password in a key that decides the
    result must not read as a change on resume, while a real change still does."""
    from omegaconf import OmegaConf

    from imgexp.tracking.resume import check_config

    weights = f"model.weights=postgresql://u:{SECRET}@h/db"
    cfg = compose_cfg(weights)
    state = {"extra": {"config": mask_container(OmegaConf.to_container(cfg, resolve=True))}}
    check_config(state, cfg, "digest", "run r")  # the same config: resumable
    with pytest.raises(ConfigError, match=r"optimizer.lr: 0.001 -> 0.01"):
        check_config(state, compose_cfg(weights, "optimizer.lr=0.01"), "digest", "run r")


@pytest.mark.slow
def test_a_tracking_server_password_reaches_no_console_and_no_file(workdir, tmp_path_factory):
    """``MLFLOW_TRACKING_URI=http://alice:<password>@...``: a run, a 2-job sweep (its parent and jobs), evaluate
    and predict print imgexp's own link, masked, and nothing else with the password: MLflow's own "View run ...
    at: <URI>" lines (printed to stdout when a run ends on a server) are off. Nor is it in any file written."""
    from PIL import Image

    from test_reliability import Server

    server = Server(tmp_path_factory.mktemp("server"))
    server.start()
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"http://alice:{SECRET}@127.0.0.1:{server.port}"}
    env.pop("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", None)
    Image.new("L", (8, 8), 128).save(workdir / "gray.png")

    def imgexp(*args: str) -> str:
        proc = subprocess.run([sys.executable, "-m", "imgexp", *args], cwd=workdir, env=env, capture_output=True,
                              text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert SECRET not in proc.stdout + proc.stderr, args
        return proc.stdout

    try:
        out = imgexp(*FAST, "tracking.experiment=secret")
        assert f"alice:***@127.0.0.1:{server.port}/#/experiments/" in out and "View run" not in out
        sweep = imgexp("-m", "seed=0,1", *FAST, "tracking.experiment=secret-sweep")
        assert sweep.count(f"alice:***@127.0.0.1:{server.port}/#/experiments/") >= 3  # 2 jobs, the parent
        (run,) = MlflowClient(server.uri).search_runs([MlflowClient(server.uri).get_experiment_by_name(
            "secret").experiment_id])
        assert f"alice:***@127.0.0.1:{server.port}" in imgexp("evaluate", f"run={run.info.run_id}")
        imgexp("predict", f"model={run.info.run_id}", f"images={workdir / 'gray.png'}", "output_dir=pred")
    finally:
        server.stop()
    assert leaks(workdir) == [] and leaks(server.folder) == []
