"""Model zoo: one registry (``MODELS``), one module per family; ``create_model`` builds from ``cfg.model``."""
from imgexp.models import alexnet, googlenet, lenet, mobilenet, resnet, small_cnn, vgg, vgg_style  # noqa: F401
from imgexp.models.registry import MODELS, create_model, register_model

__all__ = ["MODELS", "create_model", "register_model"]
