"""MLflow tracking. One run per training job; a crash inside ``start_run`` marks the run FAILED, tags it
with the error and keeps everything logged before it. A run stopped by a pruner stays FINISHED, tagged
``imgexp.status=pruned``; one stopped by a signal after saving its state is KILLED, tagged
``imgexp.status=interrupted``, and can be resumed (``resume=``), which reopens the same run."""
from __future__ import annotations

import functools
import getpass
import hashlib
import logging
import os
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, Optional

from imgexp import __version__
from imgexp.config import ConfigError
from imgexp.errors import describe, stop_signals_ignored
from imgexp.locks import sqlite_path, store_lock
from imgexp.redact import mask

log = logging.getLogger(__name__)

DEFAULT_URI = "sqlite:///mlflow.db"
CHECKPOINT_POLICIES = {"best": ("best",), "last": ("last",), "both": ("best", "last"), "none": ()}  # kept by name
SWEEP_ID_TAG = "imgexp.sweep_id"  # on a sweep's parent run and on each of its children
ERROR_TAG = "imgexp.error"  # a FAILED run's one-line error
STATUS_TAG = "imgexp.status"  # "pruned" for a run a pruner stopped early, "interrupted" for a resumable one
CONFIG_HASH_TAG = "imgexp.config_hash"  # imgexp.config.config_hash of the run's config
CHECKPOINT_DIR_TAG = "imgexp.checkpoint_dir"  # where the run's last.pt and best.pt are on its host
HOST_TAG, PID_TAG = "imgexp.host", "imgexp.pid"  # the process running the run
CODE_VERSION_TAG = "imgexp.code_version"  # code_version() of the process that trained the run


class Tracker:
    """The tracker interface; this base records nothing (``tracking=none``)."""

    run_id: Optional[str] = None

    def log_epoch(self, epoch: int, metrics: dict[str, float]) -> None: ...

    def log_metrics(self, metrics: dict[str, float]) -> None: ...

    def log_figure(self, figure, artifact_file: str) -> None: ...

    def log_text(self, text: str, artifact_file: str) -> None: ...

    def log_artifact(self, path: str | os.PathLike, artifact_path: Optional[str] = None) -> None: ...

    def set_tags(self, tags: dict[str, str]) -> None: ...

    def drop_checkpoints(self, keep: tuple[str, ...]) -> None: ...

    def log_datasets(self, records: list) -> None:
        """The run's splits (:class:`imgexp.data.records.SplitRecord`) as MLflow dataset inputs."""

    def log_model(self, weights: Path, spec, example) -> Optional[str]:
        """The best weights as the run's MLflow model (see :mod:`imgexp.tracking.logged_model`): its URI."""
        return None

    def last_logged_epoch(self) -> int:
        """The last epoch whose metrics the run holds (0: none); a resumed run logs only later ones."""
        return 0

    def stored(self, folder: Path) -> bool:
        """Whether everything logged from ``folder`` reached the tracking store (after the run ended)."""
        return False

    def where(self) -> str:
        """Where the run's results are, and how to look at them."""
        return "not tracked (tracking=none)"


def unreachable(err: BaseException) -> bool:
    """Whether an MLflow call failed because the tracking server could not be reached (or answered 5xx
    from a gateway), rather than because of what was sent."""
    import requests

    text = str(err)
    return isinstance(err, requests.exceptions.RequestException) or any(
        marker in text for marker in ("failed with exception", "Max retries exceeded", "Connection refused",
                                      "Response: 502", "Response: 503", "Response: 504"))


class MlflowTracker(Tracker):
    """Logs to one MLflow run through a client. When the server cannot be reached, training goes on: what
    could not be sent is kept in order in a :class:`~imgexp.tracking.spool.Spool` and sent once the
    server answers again (tried at most every ``RETRY_S`` seconds)."""

    RETRY_S = 20.0  # while training
    WAIT_RETRY_S = 2.0  # at the end, waiting for the server with nothing else to do

    def __init__(self, client, run_id: str, uri: str, spool_dir: Path) -> None:
        from imgexp.tracking.spool import Spool

        self.client, self.run_id, self.uri = client, run_id, uri
        self.spool = Spool(spool_dir, uri, run_id)
        logging.getLogger("urllib3.connectionpool").setLevel(logging.ERROR)  # a warning per retry: _do says
        # once per outage that the server is unreachable
        self.offline = self.spool.pending() > 0
        self.last_try = 0.0

    def _send_spool(self, every: float = RETRY_S) -> bool:
        """Try to send what is spooled (at most ``every`` seconds); True once nothing is left."""
        if not self.offline:
            return True
        if time.monotonic() - self.last_try < every:
            return False
        self.last_try = time.monotonic()
        try:
            sent = self.spool.send(self.client)
        except Exception as err:  # noqa: BLE001 - unreachable: try again later; anything else is a bug
            if unreachable(err):
                return False
            raise
        log.info("tracking server %s answers again: sent %d spooled operations", self.uri, sent)
        self.offline = False
        return True

    def _do(self, send: Callable[[], object], spool: Callable[[], None]) -> None:
        if self._send_spool():
            try:
                send()
                return
            except Exception as err:  # noqa: BLE001 - see unreachable()
                if not unreachable(err):
                    raise
                log.warning("tracking server %s unreachable (%s): training goes on, tracking is kept in %s "
                            "until it answers", self.uri, describe(err)[:200], self.spool.folder)
                self.offline, self.last_try = True, time.monotonic()
        spool()

    def _metrics(self, metrics: dict[str, float], step: Optional[int]) -> None:
        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        self._do(lambda: self.client.log_batch(self.run_id, metrics=[Metric(k, float(v), ts, step or 0)
                                                                      for k, v in metrics.items()]),
                 lambda: self.spool.append({"op": "metrics", "metrics": {k: float(v) for k, v in metrics.items()},
                                            "step": step, "ts": ts}))

    def log_epoch(self, epoch: int, metrics: dict[str, float]) -> None:
        self._metrics(metrics, epoch)

    def log_metrics(self, metrics: dict[str, float]) -> None:
        self._metrics(metrics, None)

    def log_params(self, params: dict[str, object]) -> None:
        from mlflow.entities import Param

        self.client.log_batch(self.run_id, params=[Param(k, mask(str(v))) for k, v in params.items()])

    def _file(self, artifact_file: str, write: Callable[[Path], None]) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            local = Path(tmp) / Path(artifact_file).name
            write(local)
            self.log_artifact(local, str(Path(artifact_file).parent) if "/" in artifact_file else None)

    def log_figure(self, figure, artifact_file: str) -> None:
        self._file(artifact_file, lambda path: figure.savefig(path))

    def log_text(self, text: str, artifact_file: str) -> None:
        self._file(artifact_file, lambda path: path.write_text(mask(text)))

    def log_artifact(self, path: str | os.PathLike, artifact_path: Optional[str] = None) -> None:
        self._do(lambda: self.client.log_artifact(self.run_id, str(path), artifact_path),
                 lambda: self.spool.keep_file(path, artifact_path))

    def set_tags(self, tags: dict[str, str]) -> None:
        from mlflow.entities import RunTag

        tags = {k: mask(str(v)) for k, v in tags.items()}  # no URI password in MLflow (an error, overrides)
        self._do(lambda: self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()]),
                 lambda: self.spool.append({"op": "tags", "tags": {k: str(v) for k, v in tags.items()}}))

    def log_datasets(self, records: list) -> None:
        from dataclasses import asdict

        rows = [asdict(r) for r in records]
        self._do(lambda: log_inputs(self.client, self.run_id, rows),
                 lambda: self.spool.append({"op": "inputs", "records": rows}))

    def log_model(self, weights: Path, spec, example) -> Optional[str]:
        if self.offline:  # the server is away: the weights are in the spooled checkpoints
            log.warning("tracking server %s unreachable: the best model is not logged as an MLflow model; its "
                        "weights are in the run's checkpoints/best.pt", self.uri)
            return None
        from imgexp.tracking.logged_model import log_model

        return log_model(self.uri, self.run_id, weights, spec, example)

    def last_logged_epoch(self) -> int:
        history = self.client.get_metric_history(self.run_id, "val/acc")
        return max((m.step for m in history), default=0)

    def stored(self, folder: Path) -> bool:
        return not self.offline

    def drop_checkpoints(self, keep: tuple[str, ...]) -> None:
        """Delete the run's logged checkpoints whose name is not in ``keep`` (see :func:`drop_checkpoints`);
        while the server is away, once the spool is sent."""
        if self.offline:
            self.spool.append({"op": "drop", "keep": list(keep)})
            return
        drop_checkpoints(self.client, self.run_id, keep)

    def where(self) -> str:
        return run_location(self.client, self.uri, self.run_id)

    def end(self, status: str, wait_s: float) -> None:
        """End the run with ``status``; while the server is down, wait up to ``wait_s`` for it, then say
        where the unsent tracking is and how to send it."""
        self._do(lambda: self.client.set_terminated(self.run_id, status),
                 lambda: self.spool.append({"op": "end", "status": status}))
        if not self.offline:
            self.spool.discard()
            return
        log.warning("tracking server %s unreachable: waiting up to %d s to send %d spooled operations",
                    self.uri, wait_s, self.spool.pending())
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            if self._send_spool(self.WAIT_RETRY_S):
                self.spool.discard()
                return
            time.sleep(min(self.WAIT_RETRY_S, max(0.0, deadline - time.monotonic())))
        uri = " --uri <the tracking URI, with its password>" if mask(self.uri) != self.uri else ""
        log.error("tracking server %s still unreachable: %d operations of run %s are kept in %s; send them "
                  "with: python -m imgexp.tracking.spool %s%s", self.uri, self.spool.pending(), self.run_id,
                  self.spool.folder, self.spool.folder, uri)


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


@contextmanager
def start_run(
    enabled: bool,
    uri: Optional[str],
    experiment: str,
    run_name: Optional[str],
    params: dict[str, object],
    tags: dict[str, str],
    parent_run_id: Optional[str] = None,
    run_id: Optional[str] = None,
    spool_dir: str | Path = "mlflow_spool",
    offline_wait_s: float = 600,
    checkpoints: str = "both",
) -> Iterator[Tracker]:
    """Open an MLflow run (a child of ``parent_run_id``, when given) with ``params`` and ``tags`` logged,
    or reopen run ``run_id`` (resuming: its params are already there), yield a tracker, and close it
    FINISHED, or FAILED with the error in tag ``imgexp.error``; an error whose ``run_status`` attribute is
    ``"pruned"`` leaves it FINISHED, tagged ``imgexp.status=pruned``, and ``"interrupted"`` KILLED, tagged
    ``imgexp.status=interrupted``. A server that goes away during the run: see :class:`MlflowTracker`.
    ``checkpoints`` (best, last, both or none) says which logged checkpoints a FINISHED run keeps; a pruned
    run, or a sweep's FAILED job, keeps none; a KILLED one all (it can be resumed)."""
    if not enabled:
        yield Tracker()
        return
    from imgexp.tracking.liveness import Heartbeat, claim, close_lost_runs, owner_tags

    uri, resumed = tracking_uri(uri), run_id is not None
    client = open_store(uri)
    tags = {**tags, **owner_tags(), **source_tags(),
            **parent_tags(client, parent_run_id)}  # a resumed run joins the sweep that continues it
    if run_id:  # resuming: the interruption's status and error no longer describe the run
        claim(client, run_id)
        previous = client.get_run(run_id)
        for tag in (STATUS_TAG, ERROR_TAG):
            if tag in previous.data.tags:
                client.delete_tag(run_id, tag)
    else:
        exp = experiment_id(client, experiment)
        close_lost_runs(client, exp)
        tags |= {"mlflow.user": getpass.getuser(), "mlflow.source.name": sys.argv[0], "mlflow.source.type": "LOCAL"}
        run_id = client.create_run(exp, run_name=run_name and mask(run_name),
                                   tags={k: mask(str(v)) for k, v in tags.items()}).info.run_id
    tracker = MlflowTracker(client, run_id, uri, Path(spool_dir))
    heartbeat = Heartbeat(client, run_id)
    try:
        if resumed:
            tracker.set_tags(tags)
        else:
            tracker.log_params(params)
        yield tracker
    except BaseException as err:
        status = getattr(err, "run_status", None)
        with stop_signals_ignored():  # the run ends anyway: a second signal must not leave it RUNNING
            if status == "pruned":  # FINISHED, as Optuna's PRUNED trials are complete: named so in the UI
                tracker.set_tags({STATUS_TAG: "pruned", **({"mlflow.runName": f"{mask(run_name)} (pruned)"}
                                                            if run_name else {})})
                tracker.end("FINISHED", offline_wait_s)
                tracker.drop_checkpoints(())
            elif status == "interrupted":
                tracker.set_tags({STATUS_TAG: "interrupted", ERROR_TAG: describe(err)[:5000]})
                tracker.end("KILLED", 0)
            else:
                tracker.set_tags({ERROR_TAG: describe(err)[:5000]})
                stopped = isinstance(err, (KeyboardInterrupt, SystemExit))  # SystemExit: e.g. submitit's handler
                tracker.end("KILLED" if stopped else "FAILED", 0)  # of a SLURM time limit, after training
                if not stopped and parent_run_id:  # a failed sweep job; a single run keeps what it logged
                    tracker.drop_checkpoints(())
        raise
    finally:
        heartbeat.stop()
    tracker.end("FINISHED", offline_wait_s)
    tracker.drop_checkpoints(CHECKPOINT_POLICIES[checkpoints])
