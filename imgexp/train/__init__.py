"""Training: the loop, metrics and checkpoints. No Hydra, no MLflow in here."""
from imgexp.train.loop import FitResult, NonFiniteLossError, fit

__all__ = ["FitResult", "NonFiniteLossError", "fit"]
