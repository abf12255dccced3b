"""Tracking, middle layer (uses store.py and liveness.py): where a resumed run continues from: ``resume=`` names an output directory, a checkpoint file, an MLflow
run id, or ``auto`` (the newest unfinished run with the same config hash). The run's ``last.pt`` (and
``best.pt``, when there is one) are copied or downloaded into the new run's checkpoint directory."""
from __future__ import annotations

import logging
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from omegaconf import OmegaConf

from imgexp.checkpoint import load
from imgexp.config import ConfigError, as_override, differences
from imgexp.errors import describe
from imgexp.redact import mask_container
from imgexp.tracking.liveness import check_resumable, close_lost_runs
from imgexp.tracking.store import CHECKPOINT_DIR_TAG, CONFIG_HASH_TAG, download_best_weights, open_store, tracking_uri

log = logging.getLogger(__name__)
RUN_ID = re.compile(r"^[0-9a-f]{32}$")


@dataclass
class ResumePoint:
    source: str  # what was resumed, for the log
    run_id: Optional[str]  # the MLflow run to reopen; None: the one recorded in the checkpoint, if any
    origin: Optional[Path] = None  # the run's own checkpoint folder the files came from: removed once the
    # resumed run has its own (see discard_origin)


def own_folder(folder: Path) -> Optional[Path]:
    """``folder`` if it is a run's own checkpoint folder (``checkpoints/<run id or local-...>``), else None:
    only those are removed after a resume, never a folder the user named."""
    name, parent = folder.name, folder.parent.name
    return folder if parent == "checkpoints" and (RUN_ID.match(name) or name.startswith("local-")) else None


def discard_origin(point: Optional[ResumePoint], checkpoint_dir: Path) -> None:
    """Once the resumed run's checkpoints are in ``checkpoint_dir``: remove the folder they were copied
    from (the killed attempt's), temp files included, so that kills do not pile up copies."""
    origin = point.origin if point is not None else None
    if origin is None or not origin.is_dir() or origin.resolve() == checkpoint_dir.resolve():
        return
    shutil.rmtree(origin, ignore_errors=True)
    log.info("removed %s: the resumed run's checkpoints are now in %s", origin, checkpoint_dir)


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
        return ResumePoint(str(path), None)
    copy_checkpoints(path.parent, dest_dir)
    return ResumePoint(str(path), None, own_folder(path.parent))


def download_checkpoints(client, run_id: str, dest_dir: Path) -> bool:
    """``checkpoints/last.pt`` (and the best weights: ``best.pt``, or the logged model's copy of it) of the run's
    artifacts into ``dest_dir``; False if none."""
    if "checkpoints/last.pt" not in {a.path for a in client.list_artifacts(run_id, "checkpoints")}:
        return False
    dest_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        shutil.copy2(client.download_artifacts(run_id, "checkpoints/last.pt", tmp), dest_dir / "last.pt")
        best = download_best_weights(client, run_id, Path(tmp) / "best")
        if best:
            shutil.copy2(best, dest_dir / "best.pt")
    return True


def from_run(client, run, dest_dir: Path, source: str) -> Optional[ResumePoint]:
    """The run's checkpoints: from its checkpoint directory when that is on this machine (at least as new
    as the logged copy), else from its artifacts; None when it has neither."""
    local = run.data.tags.get(CHECKPOINT_DIR_TAG)
    point = ResumePoint(source, run.info.run_id, own_folder(Path(local)) if local else None)
    if local and (Path(local) / "last.pt").exists():
        try:
            copy_checkpoints(Path(local), dest_dir)
        except FileNotFoundError:
            pass
        if (Path(local) / "last.pt").exists():  # the folder outlived the copy: its files are one pair
            return point
        # else another process resumed the run meanwhile and removed the folder: the logged copy, and the
        # claim then says which process owns the run
    return point if download_checkpoints(client, run.info.run_id, dest_dir) else None


def find(resume: str, config_hash: str, tracking, dest_dir: Path, asked: bool = True) -> Optional[ResumePoint]:
    """Put the checkpoints to resume into ``dest_dir``; None when ``resume=auto`` finds no KILLED run (an
    interrupted one, or one whose process was lost) to resume (said in the log when the user ``asked``).
    Lost runs are closed KILLED first."""
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
        check_resumable(run)
        point = from_run(client, run, dest_dir, f"MLflow run {resume}")
        if point is None:
            raise ConfigError("resume", f"MLflow run {resume} has no checkpoints/last.pt artifact")
        return point
    experiment = client.get_experiment_by_name(tracking.experiment)
    if experiment is None:
        return None
    close_lost_runs(client, experiment.experiment_id)  # a killed run is KILLED, so resumable, from here on
    runs = client.search_runs([experiment.experiment_id], f"tags.`{CONFIG_HASH_TAG}` = '{config_hash}' and "
                                                          "attributes.status = 'KILLED'",
                              order_by=["attributes.start_time DESC"])
    for run in runs:
        point = from_run(client, run, dest_dir, f"MLflow run {run.info.run_id} (resume=auto)")
        if point is not None:
            return point
    log.log(logging.INFO if asked else logging.DEBUG, "no unfinished run with config hash %s to resume: "
            "starting a new run", config_hash)
    return None


def existing_run(run_id: Optional[str], tracking) -> Optional[str]:
    """``run_id`` if the tracking store holds that run (a checkpoint's run may live in another store)."""
    if not run_id or not tracking.enabled:
        return None
    from mlflow.exceptions import MlflowException

    try:
        run = open_store(tracking_uri(tracking.uri)).get_run(run_id)
    except MlflowException:
        log.warning("the checkpoint's MLflow run %s is not in %s: resuming into a new run", run_id,
                    tracking_uri(tracking.uri))
        return None
    check_resumable(run)
    return run_id


@dataclass
class Resumed:
    point: ResumePoint
    state: dict  # the trainer's state, from last.pt
    run_id: Optional[str]  # the MLflow run to reopen (None: a new one)


def load_state(point: ResumePoint, staged: Path, tracking) -> dict:
    """``last.pt`` as staged; when it cannot be read (a truncated or damaged file), the copy logged in the
    run's MLflow artifacts."""
    try:
        return load(staged / "last.pt")
    except Exception as err:  # noqa: BLE001 - whatever torch.load raises, the file is no checkpoint
        damaged = describe(err)
    if point.run_id and tracking.enabled:
        client = open_store(tracking_uri(tracking.uri))
        if download_checkpoints(client, point.run_id, staged):
            log.warning("%s: last.pt cannot be read (%s): continuing from the copy logged in MLflow",
                        point.source, damaged[:200])
            try:
                return load(staged / "last.pt")
            except Exception as err:  # noqa: BLE001 - as above
                damaged = describe(err)
    raise ConfigError("resume", f"{point.source} holds no training state: {damaged}")


def check_config(state: dict, cfg, digest: str, source: str) -> None:
    """Refuse to resume with a config that computes something else than the run's own: a resumed run
    trains exactly its recorded config (keys that cannot change the result, such as ``tracking.*`` and
    ``progress``, may differ). The record has URI passwords masked, so ``cfg`` is compared masked too."""
    extra = state.get("extra", {})
    if extra.get("config") is not None:
        changed = differences(extra["config"], mask_container(OmegaConf.to_container(cfg, resolve=True)))
        if changed:
            listed = "; ".join(f"{key}: {old} -> {now}" for key, old, now in changed)
            overrides = [as_override(key, old) for key, old, _ in changed]
            how = (f"pass {' '.join(overrides)} (as recorded; a default may have changed since)" if all(overrides)
                   else "drop these overrides")
            raise ConfigError("resume", f"{source} was trained with another config ({listed}): a resumed run "
                                        f"trains its own; {how}, or start a new run")
    elif extra.get("config_hash") not in (None, digest):
        raise ConfigError("resume", f"{source} was trained with another config (hash {extra['config_hash']}, "
                                    f"now {digest}): a resumed run trains its own")


def prepare(wanted: str, cfg, digest: str, staged: Path, asked: bool = True) -> Optional[Resumed]:
    """What ``resume=wanted`` continues, its checkpoints staged in ``staged``, its state loaded and its
    config checked against ``cfg``; None when ``resume=auto`` finds nothing to continue (``asked``: by the
    user or SLURM's requeue, not implicitly by a sweep job)."""
    point = find(wanted, digest, cfg.tracking, staged, asked)
    if point is None:
        return None
    state = load_state(point, staged, cfg.tracking)
    check_config(state, cfg, digest, point.source)
    return Resumed(point, state, point.run_id or existing_run(state.get("extra", {}).get("run_id"), cfg.tracking))
