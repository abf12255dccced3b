"""Shared by the model-inspection plots: forward hooks on named modules, eval mode, displayable images."""
from __future__ import annotations

import sys
from contextlib import contextmanager
from typing import Callable, Iterator, Optional

import numpy as np
import torch
from torch import nn

OutputHook = Callable[[str, torch.Tensor], Optional[torch.Tensor]]


@contextmanager
def hooked(model: nn.Module, names: list[str], fn: OutputHook) -> Iterator[None]:
    """While inside, every forward calls ``fn(name, output)`` for each module in ``names`` (named as in
    ``model.named_modules()``); a tensor that ``fn`` returns replaces the module's output."""
    modules = dict(model.named_modules())
    unknown = [n for n in names if n not in modules]
    if unknown:
        raise ValueError(f"no module named {', '.join(map(repr, unknown))} in the model; "
                         f"names are as in model.named_modules(), e.g. {', '.join(list(modules)[1:4])}")
    handles = [modules[n].register_forward_hook(lambda m, i, out, n=n: fn(n, out)) for n in names]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """The model in eval mode while inside, its train/eval mode restored after."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def modules_of(model: nn.Module, kind: type[nn.Module]) -> list[str]:
    """Names of the model's modules of ``kind``, in registration order, leaving out those inside auxiliary
    classifiers (GoogLeNet's ``aux1``, ``aux2``: they run in training only) and squeeze-excitation blocks
    (their convs see 1x1 maps; only torchvision's models have them, so it is not imported for the others)."""
    squeeze_excitation = getattr(sys.modules.get("torchvision.ops"), "SqueezeExcitation", ())
    skip = tuple(f"{n}." for n, m in model.named_modules()
                 if isinstance(m, squeeze_excitation) or n.rsplit(".", 1)[-1].lower().startswith("aux"))
    return [n for n, m in model.named_modules() if isinstance(m, kind) and not n.startswith(skip)]


def describe_layer(model: nn.Module, name: str) -> str:
    """A module by its role, as people name it: ``last conv layer (256 channels)``, ``dense layer 2 of 3 (4096
    features)``; another module by the conv or dense layer it follows (``ReLU after the first dense layer (512
    features)``); its module path when there is none."""
    modules = dict(model.named_modules())
    own = layer_role(model, name, modules[name])
    if own:
        return own
    order = list(modules)
    before = [n for n in order[:order.index(name)] if layer_role(model, n, modules[n])]
    inside = [n for n in order if n.startswith(f"{name}.") and layer_role(model, n, modules[n])]
    last = (inside or before or [None])[-1]
    return f"{type(modules[name]).__name__} after the {layer_role(model, last, modules[last])}" if last else name


def layer_role(model: nn.Module, name: str, module: nn.Module) -> Optional[str]:
    """``first conv layer (64 channels)`` for a Conv2d or Linear; None for other modules."""
    for kind, noun, size in ((nn.Conv2d, "conv", f"{getattr(module, 'out_channels', 0)} channels"),
                             (nn.Linear, "dense", f"{getattr(module, 'out_features', 0)} features")):
        if isinstance(module, kind):
            names = modules_of(model, kind)
            if name not in names:  # inside an auxiliary classifier or a squeeze-excitation block
                return None
            i, n = names.index(name), len(names)
            role = (f"only {noun} layer" if n == 1 else f"last {noun} layer" if i == n - 1 else
                    f"first {noun} layer" if i == 0 else f"{noun} layer {i + 1} of {n}")
            return f"{role} ({size})"
    return None


def check_ran(names: list[str], seen) -> None:
    """ValueError naming the modules of ``names`` that produced no output (not in ``seen``)."""
    idle = [n for n in names if n not in seen]
    if idle:
        raise ValueError(f"{', '.join(map(repr, idle))} did not run in the eval-mode forward pass")


def display_image(image: torch.Tensor) -> np.ndarray:
    """A (C, H, W) image as an (H, W) or (H, W, 3) float array in [0, 1]; an image outside [0, 1] (a
    normalized one) is min-max scaled."""
    img = image.detach().float().cpu()
    if img.min() < 0 or img.max() > 1:
        img = (img - img.min()) / (img.max() - img.min()).clamp_min(1e-12)
    return img[0].numpy() if img.shape[0] == 1 else img[:3].permute(1, 2, 0).numpy()
