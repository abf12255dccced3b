"""Where a resumed run continues from: ``resume=`` names an output directory, a checkpoint file, an MLflow
run id, or ``auto`` (the newest unfinished run with the same config hash). The run's ``last.pt`` (and
``best.pt``, when there is one) are copied or downloaded into the new run's checkpoint directory."""
from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from imgexp.config import ConfigError
from imgexp.tracking.mlflow import CHECKPOINT_DIR_TAG, CONFIG_HASH_TAG, open_store, process_alive, tracking_uri

log = logging.getLogger(__name__)
RUN_ID = re.compile(r"^[0-9a-f]{32}$")
RESUMABLE_STATUSES = ("RUNNING", "KILLED")  # FAILED runs failed for a reason a rerun would meet again


@dataclass
class ResumePoint:
    source: str  # what was resumed, for the log
    run_id: Optional[str]  # the MLflow run to reopen; None: the one recorded in the checkpoint, if any


def copy_checkpoints(src_dir: Path, dest_dir: Path) -> None:
    dest_dir.mkdir(parents=True, exist_ok=True)
    for name in ("last.pt", "best.pt"):
        src = src_dir / name
        if src.exists() and src.resolve() != (dest_dir / name).resolve():
            shutil.copy2(src, dest_dir / name)


def from_path(path: Path, dest_dir: Path) -> ResumePoint:
    """A checkpoint file, a folder holding ``last.pt``, or an output dir (its newest ``checkpoints/*/last.pt``)."""
    if path.is_dir():  # a checkpoint folder, or an output dir with checkpoints/<run id>/
        found = [path / "last.pt"] if (path / "last.pt").exists() else list(path.glob("checkpoints/*/last.pt"))
        if not found:
            raise ConfigError("resume", f"no last.pt in {path} or {path / 'checkpoints/*'}")
        path = max(found, key=lambda f: f.stat().st_mtime)
    if path.name != "last.pt":  # a single file under another name: it alone is the state
        dest_dir.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, dest_dir / "last.pt")
    else:
        copy_checkpoints(path.parent, dest_dir)
    return ResumePoint(str(path), None)


def download_checkpoints(client, run_id: str, dest_dir: Path) -> bool:
    """``checkpoints/last.pt`` (and ``best.pt``) of the run's artifacts into ``dest_dir``; False if none."""
    names = {os.path.basename(a.path) for a in client.list_artifacts(run_id, "checkpoints")}
    if "last.pt" not in names:
        return False
    dest_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        for name in ("last.pt", "best.pt"):
            if name in names:
                shutil.copy2(client.download_artifacts(run_id, f"checkpoints/{name}", tmp), dest_dir / name)
    return True


def from_run(client, run, dest_dir: Path) -> bool:
    """The run's checkpoints: from its checkpoint directory when that is on this machine (at least as new
    as the logged copy), else from its artifacts."""
    local = run.data.tags.get(CHECKPOINT_DIR_TAG)
    if local and (Path(local) / "last.pt").exists():
        copy_checkpoints(Path(local), dest_dir)
        return True
    return download_checkpoints(client, run.info.run_id, dest_dir)


def find(resume: str, config_hash: str, tracking, dest_dir: Path,
         statuses: tuple[str, ...] = RESUMABLE_STATUSES) -> Optional[ResumePoint]:
    """Put the checkpoints to resume into ``dest_dir``; None when ``resume=auto`` finds no run (in one of
    ``statuses``) to resume."""
    if resume != "auto" and not RUN_ID.match(resume):
        path = Path(resume).expanduser()
        if not path.exists():
            raise ConfigError("resume", f"{resume} is not a file, a directory, an MLflow run id or 'auto'")
        return from_path(path, dest_dir)
    if not tracking.enabled:
        raise ConfigError("resume", f"resume={resume} finds runs in MLflow: with tracking=none, give the run's "
                                    "output directory or checkpoint")
    from mlflow.exceptions import MlflowException

    client = open_store(tracking_uri(tracking.uri))  # a missing server fails here, in seconds
    if resume != "auto":
        try:
            run = client.get_run(resume)
        except MlflowException:
            raise ConfigError("resume", f"no MLflow run {resume} in {tracking_uri(tracking.uri)}") from None
        if not from_run(client, run, dest_dir):
            raise ConfigError("resume", f"MLflow run {resume} has no checkpoints/last.pt artifact")
        return ResumePoint(f"MLflow run {resume}", resume)
    experiment = client.get_experiment_by_name(tracking.experiment)
    if experiment is None:
        return None
    runs = client.search_runs([experiment.experiment_id], f"tags.`{CONFIG_HASH_TAG}` = '{config_hash}'",
                              order_by=["attributes.start_time DESC"])
    for run in runs:
        if run.info.status in statuses and not process_alive(run.data.tags):
            if from_run(client, run, dest_dir):
                return ResumePoint(f"MLflow run {run.info.run_id} (resume=auto)", run.info.run_id)
    log.info("no unfinished run with config hash %s to resume: starting a new run", config_hash)
    return None


def existing_run(run_id: Optional[str], tracking) -> Optional[str]:
    """``run_id`` if the tracking store holds that run (a checkpoint's run may live in another store)."""
    if not run_id or not tracking.enabled:
        return None
    from mlflow.exceptions import MlflowException

    try:
        open_store(tracking_uri(tracking.uri)).get_run(run_id)
    except MlflowException:
        log.warning("the checkpoint's MLflow run %s is not in %s: resuming into a new run", run_id,
                    tracking_uri(tracking.uri))
        return None
    return run_id
