"""A ``custom_search_space`` function, as hydra-optuna-sweeper configs name one (tests/test_sweep_ux.py)."""


def extend(config, trial) -> None:
    """Adds a batch size to the trial's parameters."""
    trial.suggest_categorical("batch", [32, 64])
