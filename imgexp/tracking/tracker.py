"""Tracking, top layer: the :class:`Tracker` a run holds, and :func:`start_run`, which opens and closes its
MLflow run. One run per training job; a crash inside ``start_run`` marks the run FAILED, tags it with the error
and keeps everything logged before it. A run stopped by a pruner stays FINISHED, tagged ``imgexp.status=pruned``;
one stopped by a signal after saving its state is KILLED, tagged ``imgexp.status=interrupted``, and can be
resumed (``resume=``), which reopens the same run."""
from __future__ import annotations

import getpass
import logging
import os
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, Optional

from imgexp.errors import describe, stop_signals_ignored
from imgexp.redact import mask
from imgexp.tracking.liveness import Heartbeat, claim, close_lost_runs, owner_tags
from imgexp.tracking.logged_model import log_model
from imgexp.tracking.spool import Spool
from imgexp.tracking.store import (ERROR_TAG, STATUS_TAG, drop_checkpoints, experiment_id, log_inputs, open_store,
                                   parent_tags, run_location, set_tags, source_tags, tracking_uri, unreachable)

log = logging.getLogger(__name__)
CHECKPOINT_POLICIES = {"best": ("best",), "last": ("last",), "both": ("best", "last"), "none": ()}  # kept by name


class Tracker:
    """The tracker interface; this base records nothing (``tracking=none``)."""

    run_id: Optional[str] = None
    uri: Optional[str] = None  # the tracking store's
    model_holds_best = False  # whether the run's logged MLflow model holds the best weights (best.pt's bytes)

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


class MlflowTracker(Tracker):
    """Logs to one MLflow run through a client. When the server cannot be reached, training goes on: what
    could not be sent is kept in order in a :class:`~imgexp.tracking.spool.Spool` and sent once the
    server answers again (tried at most every ``RETRY_S`` seconds)."""

    RETRY_S = 20.0  # while training
    WAIT_RETRY_S = 2.0  # at the end, waiting for the server with nothing else to do

    def __init__(self, client, run_id: str, uri: str, spool_dir: Path) -> None:
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
        tags = {k: mask(str(v)) for k, v in tags.items()}  # no URI password in MLflow (an error, overrides)
        self._do(lambda: set_tags(self.client, self.run_id, tags),
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
        model_uri = log_model(self.uri, self.run_id, weights, spec, example)
        self.model_holds_best = model_uri is not None
        return model_uri

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
    # the logged model's weights.pt is a copy of best.pt: the run keeps one (its tag imgexp.best_weights says where)
    tracker.drop_checkpoints(tuple(k for k in CHECKPOINT_POLICIES[checkpoints]
                                   if not (k == "best" and tracker.model_holds_best)))
