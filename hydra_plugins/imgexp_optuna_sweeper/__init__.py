"""imgexp's Optuna sweeper (``hydra/sweeper=optuna``)."""
