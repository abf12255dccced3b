"""What Hydra composes from, registered before it composes: the root schema, every group's option schemas
(from the modules beside the code each configures), imgexp's sweepers and the templates' search path.
Called by the entry points (``python -m imgexp``, the tests, the benchmarks); nothing below imports it."""
from __future__ import annotations

from hydra.core.config_store import ConfigStore

from imgexp.config import Config


def schemas() -> dict[str, dict[str, type]]:
    """Each group's option schemas, ``{group: {name: dataclass}}``, from the module beside the code each
    configures (imgexp.models registers a schema per model builder)."""
    from imgexp.analysis.schema import SCHEMAS as analysis
    from imgexp.data.schema import SCHEMAS as data
    from imgexp.losses.schema import SCHEMAS as loss
    from imgexp.models import SCHEMAS as models
    from imgexp.optim_schema import SCHEMAS as optim
    from imgexp.tracking.schema import SCHEMAS as tracking
    from imgexp.train.schema import SCHEMAS as trainer

    return {"model": dict(models), **data, **optim, **loss, **trainer, **analysis, **tracking}


def register() -> None:
    """Store the root schema as ``config_schema`` and each option's schema under ``schema/<group>/``,
    and register imgexp's sweepers and template search path with Hydra (its plugin scan misses them in
    editable installs)."""
    from hydra.core.plugins import Plugins

    plugins = Plugins.instance()  # scan first: the scan re-executes plugin modules it finds
    from hydra_plugins.imgexp_grid_sweeper.grid_sweeper import GridSweeper
    from hydra_plugins.imgexp_optuna_sweeper.optuna_sweeper import OptunaSweeper
    from hydra_plugins.imgexp_templates.templates_searchpath import TemplatesSearchPath

    for plugin in (GridSweeper, OptunaSweeper, TemplatesSearchPath):
        plugins.register(plugin)
    cs = ConfigStore.instance()
    cs.store(name="config_schema", node=Config)
    for group, options in schemas().items():
        for name, node in options.items():
            cs.store(group=f"schema/{group}", name=name, node=node)
