"""One door to every architecture: ``@register_model`` on a builder, ``create_model(cfg, info)`` to build.

``create_model`` also does, once for every model, what ``ModelConfig``'s common keys ask for: load
torchvision's ImageNet weights (``pretrained``), load a local state dict (``weights``), freeze all but
the classifier head (``freeze_backbone``).
"""
from __future__ import annotations

import inspect
import logging
import os
import sys
import typing
from dataclasses import dataclass, field, fields, make_dataclass
from typing import Callable, List, Optional, Sequence

import torch
from hydra.core.config_store import ConfigStore
from omegaconf import MISSING
from torch import nn

from imgexp.config import ConfigError
from imgexp.runtime import checked_torchvision

log = logging.getLogger(__name__)


@dataclass
class ModelConfig:
    """Keys every model has: ``pretrained`` loads torchvision's ImageNet weights, ``weights`` a local state
    dict (after ``pretrained``), ``freeze_backbone`` leaves only the classifier head trainable."""

    name: str = MISSING
    pretrained: bool = False
    weights: Optional[str] = None
    freeze_backbone: bool = False


Check = Callable[[object], None]  # raises ConfigError for a value out of range
MODELS: dict[str, Callable[..., nn.Module]] = {}
HEADS: dict[str, tuple[str, ...]] = {}  # names of the classifier modules; empty: the model's last nn.Linear
SCHEMAS: dict[str, type] = {}  # model name -> its config schema (schema/model/<name> in Hydra's ConfigStore)
COMMON_KEYS = {f.name for f in fields(ModelConfig)}
DATA_ARGS = ("in_channels", "num_classes", "image_size")  # what every builder gets from the data


def register_model(fn: Optional[Callable[..., nn.Module]] = None, *, name: Optional[str] = None,
                   head: Sequence[str] = (), checks: Sequence[Check] = ()):
    """Register ``fn(in_channels, num_classes, image_size, **keys) -> nn.Module`` under ``name`` (default:
    the function's name), with its config schema: :class:`ModelConfig`'s keys plus ``fn``'s keyword
    arguments, typed and with the defaults its signature gives; ``checks`` add range checks. A YAML
    ``conf/model/<name>.yaml`` pulling in ``/schema/model/<name>@_here_`` makes it ``model=<name>``.
    ``head`` names the classifier modules, the ones ``freeze_backbone`` leaves trainable and ``pretrained``
    replaces; by default the model's last ``nn.Linear``. Use as ``@register_model``,
    ``@register_model(head=..., checks=...)`` or ``register_model(fn, name=...)``."""

    def add(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        key = name or fn.__name__
        if key in MODELS:
            log.warning("model %r registered again: %s replaces %s", key, qualified_name(fn),
                        qualified_name(MODELS[key]))
        MODELS[key], HEADS[key], SCHEMAS[key] = fn, tuple(head), model_schema(fn, key, checks)
        ConfigStore.instance().store(group="schema/model", name=key, node=SCHEMAS[key])
        return fn

    return add if fn is None else add(fn)


def qualified_name(fn: Callable) -> str:
    fn = getattr(fn, "func", fn)  # a functools.partial: the function it calls
    return f"{fn.__module__}.{fn.__qualname__}"


def model_schema(fn: Callable[..., nn.Module], name: str, checks: Sequence[Check]) -> type:
    """A dataclass of ``fn``'s keyword arguments after the data's (typed by their annotations, else by their
    defaults; ``List[...]`` for a list or tuple default), based on :class:`ModelConfig`, whose
    ``__post_init__`` runs ``checks``."""
    keys: list = [("name", str, field(default=name))]
    for p in inspect.signature(fn, eval_str=True).parameters.values():
        if p.name in DATA_ARGS or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        if p.default is p.empty:
            raise TypeError(f"model {name}: argument {p.name!r} needs a default (it is the config's)")
        kind = p.annotation if p.annotation is not p.empty else typing.Any if p.default is None else type(p.default)
        if isinstance(p.default, (list, tuple)):
            item = (typing.get_args(kind) or (typing.Any,))[0]
            keys.append((p.name, List[item], field(default_factory=lambda d=p.default: list(d))))
        else:
            keys.append((p.name, kind, field(default=p.default)))

    def __post_init__(self) -> None:
        for check in checks:
            check(self)

    module = getattr(fn, "func", fn).__module__
    schema = make_dataclass(f"{name}_config", keys, bases=(ModelConfig,), namespace={"__post_init__": __post_init__})
    schema.__module__ = module
    setattr(sys.modules[module], schema.__name__, schema)  # pickled configs (process launchers) find it there
    return schema


def create_model(cfg, info) -> nn.Module:
    """Build ``cfg.name`` for the data's channels, classes and image size; the model's own cfg fields are
    kwargs of its builder."""
    if cfg.name not in MODELS:
        raise ConfigError("model.name", f"unknown model {cfg.name!r}; known: {', '.join(sorted(MODELS))}")
    kwargs = {k: v for k, v in cfg.items() if k not in COMMON_KEYS}
    model = MODELS[cfg.name](
        in_channels=info.channels, num_classes=info.num_classes, image_size=(info.height, info.width), **kwargs
    )
    check_input_size(model, cfg.name, info)
    heads = head_names(model, cfg.name)
    if cfg.get("pretrained", False):
        load_pretrained(model, cfg.name, heads, info.channels)
    if cfg.get("weights"):
        load_weights(model, cfg.weights)
    if cfg.get("freeze_backbone", False):
        for param in model.parameters():
            param.requires_grad_(False)
        for head in heads:
            model.get_submodule(head).requires_grad_(True)
    return model


def check_input_size(model: nn.Module, name: str, info) -> None:
    """One forward pass of two blank images of the data's size, so an image size the architecture cannot
    take fails here with the key to change, not mid-epoch."""
    was_training = model.training
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(2, info.channels, info.height, info.width))
    except RuntimeError as err:
        raise ConfigError("data.image_size", f"{info.height}x{info.width} images are too small for {name}: "
                                             f"{str(err).splitlines()[0][:200]}") from None
    finally:
        model.train(was_training)


def head_names(model: nn.Module, name: str) -> tuple[str, ...]:
    """The registered heads of ``name``, else the name of ``model``'s last ``nn.Linear``."""
    return HEADS[name] or ([n for n, m in model.named_modules() if isinstance(m, nn.Linear)][-1],)


def load_pretrained(model: nn.Module, name: str, heads: tuple[str, ...], in_channels: int) -> None:
    """Load torchvision's default ImageNet weights for ``name`` into ``model`` except its heads. Where the
    model was adapted (a small-input stem), a module whose tensors no longer fit keeps its fresh init; a
    first conv for ``in_channels != 3`` gets the RGB filters' mean (scaled by 3 / in_channels)."""
    torchvision = checked_torchvision()

    if name not in torchvision.models.list_models():
        raise ConfigError("model.pretrained", f"no pretrained weights for {name} (only torchvision's models)")
    weights = torchvision.models.get_model_weights(name).DEFAULT
    cached = os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(weights.url))
    try:
        state = weights.get_state_dict(progress=True, check_hash=True)
    except OSError as err:  # no network: urllib fails at once with a URLError
        raise ConfigError(
            "model.pretrained", f"cannot download {weights.url} ({err}); offline, put that file at {cached}"
        ) from None
    own = model.state_dict()
    first_conv = next(n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)) + ".weight"
    w = state[first_conv]
    if in_channels != 3 and own[first_conv].shape[2:] == w.shape[2:]:
        state[first_conv] = w.mean(1, keepdim=True).repeat(1, in_channels, 1, 1) * (3 / in_channels)
    skip = tuple(f"{h}." for h in heads)
    misfits = {module_of(k) for k, v in own.items() if k not in state or state[k].shape != v.shape}
    fit = {k: v for k, v in state.items() if k in own and module_of(k) not in misfits and not k.startswith(skip)}
    fresh = [k for k in own if k not in fit and not k.startswith(skip)]
    if fresh:
        log.warning("pretrained %s: %d tensors keep their fresh init (adapted to the input): %s",
                    name, len(fresh), ", ".join(fresh))
    model.load_state_dict(fit, strict=False)


def module_of(key: str) -> str:
    return key.rsplit(".", 1)[0]


def load_weights(model: nn.Module, path: str) -> None:
    """Load a state dict saved with ``torch.save``; every key and shape must match."""
    if not os.path.isfile(path):
        raise ConfigError("model.weights", f"cannot load {path}: no such file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - torch.load raises many kinds on a file that is not a checkpoint
        reason = str(err).splitlines()[0].split(". ")[0] if str(err).strip() else type(err).__name__
        raise ConfigError("model.weights", f"{path} is not a PyTorch checkpoint ({reason[:120]})") from None
    if isinstance(state, dict) and isinstance(state.get("model"), dict) and "optimizer" in state:
        state = state["model"]  # a run's last.pt: its model weights
    if not isinstance(state, dict):
        raise ConfigError("model.weights", f"{path} holds a {type(state).__name__}, not a state dict")
    own = model.state_dict()
    problems = {
        "missing": [k for k in own if k not in state],
        "unexpected": [k for k in state if k not in own],
        "wrong shape": [k for k in own if k in state and own[k].shape != state[k].shape],
    }
    found = [f"{kind} {', '.join(keys[:5])}{' ...' if len(keys) > 5 else ''} ({len(keys)})"
             for kind, keys in problems.items() if keys]
    if found:
        raise ConfigError("model.weights", f"{path} does not fit this model: {'; '.join(found)}")
    model.load_state_dict(state)
