"""``hydra/sweeper=optuna``: Hydra's plugin class. Hydra imports every plugin module at every start, so this
one imports nothing heavy; the sweep (:mod:`hydra_plugins.imgexp_optuna_sweeper.study`) and Optuna load
when a sweep sets up."""
from __future__ import annotations

from typing import Any, List

from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig

from hydra_plugins.imgexp_optuna_sweeper.config import OptunaSweeperConf  # noqa: F401  (stores hydra/sweeper=optuna)


class OptunaSweeper(Sweeper):
    def __init__(self, **settings: Any) -> None:
        self.settings = settings

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        from hydra_plugins.imgexp_optuna_sweeper.study import StudySweeper

        self.study = StudySweeper(**self.settings)
        self.study.setup(hydra_context=hydra_context, task_function=task_function, config=config)

    def sweep(self, arguments: List[str]) -> Any:
        return self.study.sweep(arguments)
