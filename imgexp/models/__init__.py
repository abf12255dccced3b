"""Model zoo: one registry (``MODELS``), one module per family; ``create_model`` builds from ``cfg.model``."""
from imgexp.models import small_cnn  # noqa: F401  (registers)
from imgexp.models.registry import MODELS, create_model, register_model

__all__ = ["MODELS", "create_model", "register_model"]
