"""imgexp: Hydra-driven experiments and sweeps for image classification in PyTorch, tracked in MLflow."""

__version__ = "0.1.0"
