"""Tracking, bottom layer (nothing of tracking/): config schema of the tracking group (conf/tracking/): where and how a run is logged in MLflow."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from imgexp.config import ConfigError, require_choice

CHECKPOINTS = ("best", "last", "both", "none")  # tracking.checkpoints: see imgexp.tracking.tracker.start_run


@dataclass
class TrackingConfig:
    enabled: bool = True
    uri: Optional[str] = None  # None: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db in the working directory
    experiment: str = "imgexp"
    run_name: Optional[str] = None
    parent_run_id: Optional[str] = None  # set by imgexp's sweepers: the sweep's MLflow parent run
    job_name: Optional[str] = None  # set by imgexp's sweepers: the job's swept values, its run's name
    log_model: bool = True  # the best weights as the run's MLflow model (runs:/<run id>/model)
    checkpoints: str = "best"  # logged checkpoints a FINISHED run keeps: best | last | both | none (last.pt is
    # logged every epoch while it trains, to resume from; pruned runs and a sweep's failed jobs keep none)
    register: Optional[str] = None  # register that model under this name (a sweep: its best job's model)
    offline_wait_s: float = 600  # a server down at the run's end: wait this long, then keep the rest on disk
    system_metrics: bool = True  # CPU, memory, disk, network (GPU) of each machine, a point a minute

    def __post_init__(self) -> None:
        require_choice(self.checkpoints, CHECKPOINTS, "checkpoints")
        if self.register is not None:  # MLflow's own rules, before training rather than at its end
            from mlflow.exceptions import MlflowException
            from mlflow.utils.validation import _validate_model_name

            try:
                _validate_model_name(self.register)
            except MlflowException as err:
                raise ConfigError("register", err.message) from None


SCHEMAS = {"tracking": {"base": TrackingConfig}}
