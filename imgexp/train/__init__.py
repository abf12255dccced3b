"""Training: the engine (:class:`Trainer`), its schedule, metrics and stop signals. No Hydra, no MLflow."""
from imgexp.train.schedule import Schedule
from imgexp.train.trainer import FitResult, NonFiniteLossError, Trainer, TrainingInterrupted

__all__ = ["FitResult", "NonFiniteLossError", "Schedule", "Trainer", "TrainingInterrupted"]
