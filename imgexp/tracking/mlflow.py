"""MLflow tracking. One run per training job; a crash inside ``start_run`` marks the run FAILED and
keeps everything logged before it."""
from __future__ import annotations

import os
import subprocess
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional

DEFAULT_URI = "sqlite:///mlflow.db"


class Tracker:
    """The tracker interface; this base records nothing (``tracking=none``)."""

    run_id: Optional[str] = None

    def log_epoch(self, epoch: int, metrics: dict[str, float]) -> None: ...

    def log_metrics(self, metrics: dict[str, float]) -> None: ...

    def log_figure(self, figure, artifact_file: str) -> None: ...

    def log_text(self, text: str, artifact_file: str) -> None: ...

    def log_artifact(self, path: str | os.PathLike, artifact_path: Optional[str] = None) -> None: ...


class MlflowTracker(Tracker):
    def __init__(self, run) -> None:
        import mlflow

        self._mlflow, self.run_id = mlflow, run.info.run_id

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
) -> Iterator[Tracker]:
    """Open an MLflow run with ``params`` and ``tags`` logged, yield a tracker, close it FINISHED or FAILED."""
    if not enabled:
        yield Tracker()
        return
    import mlflow

    mlflow.set_tracking_uri(tracking_uri(uri))
    mlflow.set_experiment(experiment)
    commit = git_commit(Path(__file__).resolve().parent)
    if commit:
        tags = {**tags, "mlflow.source.git.commit": commit}
    with mlflow.start_run(run_name=run_name, tags=tags) as run:
        mlflow.log_params(params)
        yield MlflowTracker(run)
