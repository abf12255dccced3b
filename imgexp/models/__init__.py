"""Model zoo: one registry (``MODELS``), one module per family; ``create_model`` builds from ``cfg.model``.
Every module in this package is imported here, so a new family is a new module: its ``@register_model``
builder, and a YAML in conf/model/."""
import importlib
import pkgutil

from imgexp.models.registry import MODELS, SCHEMAS, create_model, register_model

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["MODELS", "SCHEMAS", "create_model", "register_model"]
