"""MLflow tracking. One run per training job; a crash inside ``start_run`` marks the run FAILED, tags it
with the error and keeps everything logged before it. A run stopped by a pruner stays FINISHED, tagged
``imgexp.status=pruned``; one stopped by a signal after saving its state is KILLED, tagged
``imgexp.status=interrupted``, and can be resumed (``resume=``), which reopens the same run."""
from __future__ import annotations

import os
import socket
import subprocess
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional

from imgexp.errors import describe

DEFAULT_URI = "sqlite:///mlflow.db"
SWEEP_ID_TAG = "imgexp.sweep_id"  # on a sweep's parent run and on each of its children
ERROR_TAG = "imgexp.error"  # a FAILED run's one-line error
STATUS_TAG = "imgexp.status"  # "pruned" for a run a pruner stopped early, "interrupted" for a resumable one
CONFIG_HASH_TAG = "imgexp.config_hash"  # imgexp.config.config_hash of the run's config
CHECKPOINT_DIR_TAG = "imgexp.checkpoint_dir"  # where the run's last.pt and best.pt are on its host


class Tracker:
    """The tracker interface; this base records nothing (``tracking=none``)."""

    run_id: Optional[str] = None

    def log_epoch(self, epoch: int, metrics: dict[str, float]) -> None: ...

    def log_metrics(self, metrics: dict[str, float]) -> None: ...

    def log_figure(self, figure, artifact_file: str) -> None: ...

    def log_text(self, text: str, artifact_file: str) -> None: ...

    def log_artifact(self, path: str | os.PathLike, artifact_path: Optional[str] = None) -> None: ...

    def last_logged_epoch(self) -> int:
        """The last epoch whose metrics the run holds (0: none); a resumed run logs only later ones."""
        return 0


class MlflowTracker(Tracker):
    def __init__(self, run) -> None:
        import mlflow

        self._mlflow, self.run_id = mlflow, run.info.run_id

    def last_logged_epoch(self) -> int:
        history = self._mlflow.MlflowClient().get_metric_history(self.run_id, "val/acc")
        return max((m.step for m in history), default=0)

    def log_epoch(self, epoch: int, metrics: dict[str, float]) -> None:
        self._mlflow.log_metrics(metrics, step=epoch)

    def log_metrics(self, metrics: dict[str, float]) -> None:
        self._mlflow.log_metrics(metrics)

    def log_figure(self, figure, artifact_file: str) -> None:
        self._mlflow.log_figure(figure, artifact_file)

    def log_text(self, text: str, artifact_file: str) -> None:
        self._mlflow.log_text(text, artifact_file)

    def log_artifact(self, path: str | os.PathLike, artifact_path: Optional[str] = None) -> None:
        self._mlflow.log_artifact(str(path), artifact_path)


def tracking_uri(configured: Optional[str]) -> str:
    """Config first, then ``$MLFLOW_TRACKING_URI``, then a SQLite file in the working directory."""
    return configured or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_URI


def git_commit(path: str | os.PathLike = ".") -> Optional[str]:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=path, capture_output=True, text=True, timeout=5, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


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
) -> Iterator[Tracker]:
    """Open an MLflow run (a child of ``parent_run_id``, when given) with ``params`` and ``tags`` logged,
    or reopen run ``run_id`` (resuming: its params are already there), yield a tracker, and close it
    FINISHED, or FAILED with the error in tag ``imgexp.error``; an error whose ``run_status`` attribute is
    ``"pruned"`` leaves it FINISHED, tagged ``imgexp.status=pruned``, and ``"interrupted"`` KILLED, tagged
    ``imgexp.status=interrupted``."""
    if not enabled:
        yield Tracker()
        return
    import mlflow

    mlflow.set_tracking_uri(tracking_uri(uri))
    tags = {**tags, "imgexp.host": socket.gethostname(), "imgexp.pid": str(os.getpid())}
    commit = git_commit(Path(__file__).resolve().parent)
    if commit:
        tags["mlflow.source.git.commit"] = commit
    if run_id:  # resuming: the interruption's status and error no longer describe the run
        client = mlflow.MlflowClient()
        previous = client.get_run(run_id)
        for tag in (STATUS_TAG, ERROR_TAG):
            if tag in previous.data.tags:
                client.delete_tag(run_id, tag)
        mlflow.set_experiment(experiment_id=previous.info.experiment_id)
        run = mlflow.start_run(run_id=run_id)
        mlflow.set_tags(tags)
    else:
        mlflow.set_experiment(experiment)
        if parent_run_id:
            parent_tags = mlflow.MlflowClient().get_run(parent_run_id).data.tags
            tags = {**tags, SWEEP_ID_TAG: parent_tags.get(SWEEP_ID_TAG, parent_run_id)}
        run = mlflow.start_run(run_name=run_name, tags=tags, parent_run_id=parent_run_id)
    try:
        if not run_id:
            mlflow.log_params(params)
        yield MlflowTracker(run)
    except BaseException as err:
        status = getattr(err, "run_status", None)
        if status == "pruned":
            mlflow.set_tag(STATUS_TAG, "pruned")
            mlflow.end_run("FINISHED")
        elif status == "interrupted":
            mlflow.set_tags({STATUS_TAG: "interrupted", ERROR_TAG: describe(err)[:5000]})
            mlflow.end_run("KILLED")
        else:
            mlflow.set_tag(ERROR_TAG, describe(err)[:5000])
            mlflow.end_run("KILLED" if isinstance(err, KeyboardInterrupt) else "FAILED")
        raise
    mlflow.end_run("FINISHED")
