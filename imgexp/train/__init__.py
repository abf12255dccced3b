"""Training: the engine (:class:`Trainer`), its schedule, metrics and stop signals. No Hydra, no MLflow."""
from imgexp.train.schedule import Schedule
from imgexp.train.stopping import NonFiniteLossError, TrainingInterrupted
from imgexp.train.trainer import FitResult, Trainer

__all__ = ["FitResult", "NonFiniteLossError", "Schedule", "Trainer", "TrainingInterrupted"]
