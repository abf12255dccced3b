"""Tracking: a thin layer that hands a run's params, metrics and files to MLflow (or to nothing)."""
from imgexp.tracking.mlflow import MlflowTracker, Tracker, start_run

__all__ = ["MlflowTracker", "Tracker", "start_run"]
