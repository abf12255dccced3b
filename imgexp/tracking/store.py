"""Tracking, bottom layer: the one module of tracking/ that talks to MLflow and imports nothing of tracking/.
The store (its URI, a client checked within seconds, few HTTP retries), the tag names imgexp writes, experiment
creation, run links, the code's version, dataset inputs and the deletion of logged checkpoints."""
from __future__ import annotations

import functools
import hashlib
import logging
import os
import subprocess
import time
from pathlib import Path
from typing import Optional

from imgexp import __version__
from imgexp.config import ConfigError
from imgexp.errors import describe
from imgexp.locks import sqlite_path, store_lock
from imgexp.redact import mask

log = logging.getLogger(__name__)
# MLflow prints "View run <name> at: <server URI>/..." to stdout as a run on a server ends, the URI's password in
# clear and outside logging's masking; imgexp prints its own link, masked (run_location): MLflow's is off
os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")

DEFAULT_URI = "sqlite:///mlflow.db"
# the tags imgexp writes on runs
SWEEP_ID_TAG = "imgexp.sweep_id"  # on a sweep's parent run and on each of its children
ERROR_TAG = "imgexp.error"  # a FAILED run's one-line error
STATUS_TAG = "imgexp.status"  # "pruned" for a run a pruner stopped early, "interrupted" for a resumable one, "lost"
CONFIG_HASH_TAG = "imgexp.config_hash"  # imgexp.config.config_hash of the run's config
CHECKPOINT_DIR_TAG = "imgexp.checkpoint_dir"  # where the run's last.pt and best.pt are on its host
HOST_TAG, PID_TAG = "imgexp.host", "imgexp.pid"  # the process running the run
HEARTBEAT_TAG = "imgexp.heartbeat"  # Unix seconds, renewed while the run is open (see liveness.py)
SLURM_TAG = "imgexp.slurm_job"  # <job id>[_<array task>]#<restart count>, for runs inside SLURM
CODE_VERSION_TAG = "imgexp.code_version"  # code_version() of the process that trained the run
REUSED_FROM_TAG = "imgexp.reused_from"  # on a record of a reused run: the run that was trained (see reuse.py)
BEST_WEIGHTS_TAG = "imgexp.best_weights"  # the logged model's weights.pt (best.pt's bytes, stored once: see tracker.py)
REGISTERED_TAG = "imgexp.registered"  # on a run whose model was registered: "<name>/<version>"
ROLE_TAG = "imgexp.role"  # "sweep" on parent runs, "evaluation" on imgexp.evaluate's runs
SWEEPER_TAG = "imgexp.sweeper"  # grid | optuna, on parent runs


def unreachable(err: BaseException) -> bool:
    """Whether an MLflow call failed because the tracking server could not be reached (or answered 5xx
    from a gateway), rather than because of what was sent."""
    import requests

    text = str(err)
    return isinstance(err, requests.exceptions.RequestException) or any(
        marker in text for marker in ("failed with exception", "Max retries exceeded", "Connection refused",
                                      "Response: 502", "Response: 503", "Response: 504"))


MAX_CLASSES_LISTED = 100  # in a dataset's profile


def dataset_inputs(records: list[dict]) -> list:
    """MLflow dataset inputs of split records (as dicts), each tagged with its split as its context."""
    import json

    from mlflow.entities import Dataset, DatasetInput, InputTag

    def profile(r: dict) -> str:
        names = r["class_names"]
        return json.dumps({"num_images": r["images"], "num_classes": len(names),
                           "classes": names[:MAX_CLASSES_LISTED] + ["..."] * (len(names) > MAX_CLASSES_LISTED)})

    return [DatasetInput(Dataset(r["name"], r["digest"], "local" if r["source"].startswith("/") else "code",
                                 json.dumps({"uri": mask(r["source"])}), profile=profile(r)),
                         [InputTag("mlflow.data.context", r["split"])]) for r in records]


def download_best_weights(client, run_id: str, dst: str | Path) -> Optional[str]:
    """Run ``run_id``'s best weights (a state dict file) downloaded into folder ``dst``: its logged
    ``checkpoints/best.pt``, else the copy in its logged MLflow model (tag ``imgexp.best_weights``); None if
    neither."""
    if "checkpoints/best.pt" in {a.path for a in client.list_artifacts(run_id, "checkpoints")}:
        return client.download_artifacts(run_id, "checkpoints/best.pt", str(dst))
    reference = client.get_run(run_id).data.tags.get(BEST_WEIGHTS_TAG)
    if reference is None:
        return None
    from mlflow.artifacts import download_artifacts

    return download_artifacts(artifact_uri=reference, dst_path=str(dst), tracking_uri=client.tracking_uri)


def drop_checkpoints(client, run_id: str, keep) -> None:
    """Delete run ``run_id``'s logged checkpoints (``checkpoints/<name>.pt``) whose name is not in ``keep``; a
    store that cannot is one warning (they stay)."""
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    try:
        doomed = [a.path for a in client.list_artifacts(run_id, "checkpoints") if Path(a.path).stem not in keep]
        repo = get_artifact_repository(client.get_run(run_id).info.artifact_uri, client.tracking_uri) if doomed \
            else None  # mlflow-artifacts:/ URIs are served by the run's server, not by MLflow's global URI
        for path in doomed:
            repo.delete_artifacts(path)
    except Exception as err:  # noqa: BLE001 - e.g. an artifact store without deletion
        log.warning("checkpoints of run %s not removed from MLflow: %s", run_id, describe(err)[:200])


RACE_MARKERS = ("UNIQUE constraint failed", "duplicate key value", "Duplicate entry")  # SQLite, PostgreSQL, MySQL


def set_tags(client, run_id: str, tags: dict[str, str]) -> None:
    """Set ``tags`` on run ``run_id`` through MLflow's batch write, which retries when another process inserts
    one of the same tags at that moment (a study's workers all write to its parent run); ``client.set_tag``
    fails then with the store's unique constraint."""
    from mlflow.entities import RunTag

    items = [RunTag(k, str(v)) for k, v in tags.items()]
    for i in range(0, len(items), 100):  # MLflow's limit of tags per batch
        client.log_batch(run_id, tags=items[i:i + 100])


def log_inputs(client, run_id: str, records: list[dict], tries: int = 5) -> None:
    """Log split records as the run's dataset inputs. A data set is one row per experiment that its runs
    share: when runs started together insert it at once, the store's unique constraint fails all but one,
    and the others log again (then finding the row)."""
    for attempt in range(tries):
        try:
            client.log_inputs(run_id, datasets=dataset_inputs(records))
            return
        except Exception as err:  # noqa: BLE001 - the race above, else raised
            if attempt == tries - 1 or not any(m in str(err) for m in RACE_MARKERS):
                raise
            time.sleep(0.2 * (attempt + 1))


def run_location(client, uri: str, run_id: str) -> str:
    """Where run ``run_id`` is and the link that opens it in MLflow's UI (for a local store: the ``mlflow ui``
    command too)."""
    try:
        experiment = client.get_run(run_id).info.experiment_id
    except Exception:  # noqa: BLE001 - the server went away: say what is known
        return f"MLflow run {run_id} in {mask(uri)}"
    page = f"#/experiments/{experiment}/runs/{run_id}?{UI_VIEW}"
    if uri.startswith(("http://", "https://")):
        return f"MLflow run {run_id}: {mask(uri).rstrip('/')}/{page}"
    return (f"MLflow run {run_id}; see it with: mlflow ui --backend-store-uri {mask(uri)} and open "
            f"http://127.0.0.1:5000/{page}")


def tracking_uri(configured: Optional[str]) -> str:
    """Config first, then ``$MLFLOW_TRACKING_URI``, then a SQLite file in the working directory. A relative
    SQLite path is made absolute: MLflow caches stores by URI, and the working directory can change."""
    uri = configured or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_URI
    db = sqlite_path(uri)
    return f"sqlite:///{db.resolve()}" if db is not None and not uri.startswith("sqlite:////") else uri


DATABASE_TIMEOUT_ARG = {"postgresql": "connect_timeout", "mysql": "connect_timeout", "mssql": "timeout"}


def check_database(uri: str, key: str, timeout_s: int = 5) -> None:
    """Connect once to a database URI (PostgreSQL, MySQL, SQL Server) within ``timeout_s``, or raise a
    ConfigError naming ``key``: MLflow retries an unreachable database for about two minutes."""
    backend = uri.split("://", 1)[0].split("+", 1)[0]
    if backend not in DATABASE_TIMEOUT_ARG or "://" not in uri:
        return
    from sqlalchemy import create_engine
    from sqlalchemy.pool import NullPool

    try:
        engine = create_engine(uri, poolclass=NullPool, connect_args={DATABASE_TIMEOUT_ARG[backend]: timeout_s})
        with engine.connect():
            pass
        engine.dispose()
    except Exception as err:  # noqa: BLE001 - no driver, a bad URI, refused, timed out, wrong password
        raise ConfigError(key, f"cannot connect to {mask(uri)}: {describe(err)[:300]}") from None


def few_http_retries() -> None:
    """Failed HTTP calls to a tracking server retried twice, not MLflow's default seven times (minutes), unless
    the environment says otherwise."""
    for key, value in (("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2"), ("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1"),
                       ("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")):
        os.environ.setdefault(key, value)


def open_store(uri: str):
    """An ``MlflowClient`` for ``uri``, after checking, within seconds, that the store can be used: a
    server answers its health check, a SQLite file can be written. Few HTTP retries (:func:`few_http_retries`):
    a run keeps what it cannot send (see MlflowTracker)."""
    from mlflow import MlflowClient

    few_http_retries()
    if uri.startswith(("http://", "https://")):
        import requests

        try:
            requests.get(f"{uri.rstrip('/')}/health", timeout=5).raise_for_status()
        except requests.exceptions.RequestException as err:
            raise ConfigError("tracking.uri", f"no MLflow server answers at {uri}: {describe(err)[:300]}") from None
    db = sqlite_path(uri)
    if db is not None:
        target = db.resolve() if db.exists() else db.parent.resolve()
        if not os.access(target, os.W_OK):
            raise ConfigError("tracking.uri", f"{target} is read-only: the MLflow store {uri} cannot be written")
    check_database(uri, "tracking.uri")
    with store_lock(uri):  # one process at a time creates (or migrates) a new SQLite store
        client = MlflowClient(uri)
        client.search_experiments(max_results=1)
    return client


# MLflow 3's UI opens experiments on its GenAI view unless told otherwise: the experiment's kind (older 3.x) and
# the page's workflowType (3.17: a switch kept per browser, GenAI by default) say model training.
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}
UI_VIEW = "workflowType=machine_learning"


def experiment_id(client, name: str) -> str:
    """The experiment's id, created if new (under the store lock: concurrent runs create it once), and
    marked as model training so that MLflow's UI opens it on its runs."""
    with store_lock(client.tracking_uri):
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            return client.create_experiment(name, tags=EXPERIMENT_KIND)
        if "mlflow.experimentKind" not in experiment.tags:
            client.set_experiment_tag(experiment.experiment_id, *next(iter(EXPERIMENT_KIND.items())))
        return experiment.experiment_id


@functools.lru_cache(maxsize=None)
def git_commit() -> Optional[str]:
    """The git commit of imgexp's source tree, when it is a git checkout."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent,
                             capture_output=True, text=True, timeout=5, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


@functools.lru_cache(maxsize=None)
def code_version() -> str:
    """imgexp's version and a hash of its Python sources (``0.1.0+3f2a...``): unlike the git commit, it
    changes with uncommitted edits and is known in an installed wheel. Two runs with the same config hash
    and code version compute the same thing."""
    root = Path(__file__).resolve().parents[1]
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes())
    return f"{__version__}+{digest.hexdigest()[:12]}"


def source_tags() -> dict[str, str]:
    """Tags naming the code a run or sweep ran: the code version, and the git commit when known."""
    commit = git_commit()
    return {CODE_VERSION_TAG: code_version(), **({"mlflow.source.git.commit": commit} if commit else {})}


def parent_tags(client, parent_run_id: Optional[str]) -> dict[str, str]:
    """The tags that make a run a child of sweep parent ``parent_run_id`` (none without one)."""
    if not parent_run_id:
        return {}
    sweep_id = client.get_run(parent_run_id).data.tags.get(SWEEP_ID_TAG, parent_run_id)
    return {SWEEP_ID_TAG: sweep_id, "mlflow.parentRunId": parent_run_id}
