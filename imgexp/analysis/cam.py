"""Class activation maps: Grad-CAM at any conv layer, plain CAM for global-average-pool -> Linear heads,
and report C's overlay grids. Heat maps are (N, H, W) in [0, 1] at the input's size; figures are the
caller's to close (``plt.close(fig)``).

Grad-CAM's forward hook keeps the layer's output and hands the rest of the network a clone of it, so a
``ReLU(inplace=True)`` after the layer changes the clone, never the stored map; the input is made to
require grad, so frozen layers (``freeze_backbone``) still leave every output in the graph.
"""
from __future__ import annotations

from typing import Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn

from imgexp.analysis.common import (check_ran, describe_layer, display_image, eval_mode, hooked, model_device,
                                   modules_of)
from imgexp.analysis.pyplot import plt

Target = Union[None, int, torch.Tensor]  # None: the predicted class; an int: that class for all; (N,) per image
HEAD_PASSTHROUGH = (nn.Flatten, nn.Dropout, nn.Identity)  # modules allowed between the pool and the Linear


def default_cam_layer(model: nn.Module) -> str:
    """The name of the model's last ``nn.Conv2d``."""
    convs = modules_of(model, nn.Conv2d)
    if not convs:
        raise ValueError("the model has no nn.Conv2d")
    return convs[-1]


def depth_layers(model: nn.Module, count: int = 3) -> list[str]:
    """``count`` conv layers spread over the depth: for 3, the convs at 1/3, 2/3 and the last."""
    convs = modules_of(model, nn.Conv2d)
    return list(dict.fromkeys(convs[max(0, round(len(convs) * (i + 1) / count) - 1)] for i in range(count)))


def to_heatmaps(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(N, h, w) raw maps -> ReLU, bilinear upsampling to ``size``, min-max to [0, 1] per map (an all-zero
    map stays zero)."""
    up = F.interpolate(maps.relu().unsqueeze(1), size=size, mode="bilinear", align_corners=False).squeeze(1)
    lo, hi = up.amin((1, 2), keepdim=True), up.amax((1, 2), keepdim=True)
    return ((up - lo) / (hi - lo).clamp_min(1e-12)).detach().cpu()


def class_index(logits: torch.Tensor, target: Target) -> torch.Tensor:
    if target is None:
        return logits.argmax(1)
    return torch.as_tensor(target, device=logits.device).expand(len(logits))


def grad_cams(model: nn.Module, layer_names: list[str], x: torch.Tensor, target: Target = None
              ) -> dict[str, torch.Tensor]:
    """Grad-CAM of (N, C, H, W) ``x`` at each of ``layer_names`` (modules with 4-d outputs) from one
    forward and backward pass: ``{layer: (N, H, W) heat maps in [0, 1]}``, for ``target``'s classes."""
    acts: dict[str, torch.Tensor] = {}

    def keep(name: str, out: torch.Tensor) -> torch.Tensor:
        if out.dim() != 4:
            raise ValueError(f"Grad-CAM needs a layer with (N, C, h, w) output; {name!r} gives {tuple(out.shape)}")
        acts[name] = out
        return out.clone()  # downstream in-place ops change the clone, not the stored activation

    x = x.to(model_device(model)).detach().requires_grad_()  # so every layer's output is in the graph
    with eval_mode(model), hooked(model, layer_names, keep), torch.enable_grad():
        logits = model(x)
        check_ran(layer_names, acts)
        score = logits.gather(1, class_index(logits, target)[:, None]).sum()
        grads = torch.autograd.grad(score, [acts[n] for n in layer_names])
    return {n: to_heatmaps((g.mean((2, 3), keepdim=True) * acts[n]).sum(1), x.shape[2:])
            for n, g in zip(layer_names, grads)}


def grad_cam(model: nn.Module, layer_name: str, x: torch.Tensor, target: Target = None) -> torch.Tensor:
    """(N, H, W) Grad-CAM heat maps in [0, 1] of (N, C, H, W) ``x`` at ``layer_name``, upsampled to the
    input size; ``target`` None explains the predicted class, an int or (N,) tensor the given ones."""
    return grad_cams(model, [layer_name], x, target)[layer_name]


def is_global_pool(module: nn.Module) -> bool:
    return isinstance(module, nn.AdaptiveAvgPool2d) and module.output_size in (1, (1, 1))


@torch.no_grad()
def cam(model: nn.Module, x: torch.Tensor, target: Target = None) -> torch.Tensor:
    """Plain CAM (Zhou et al. 2016), (N, H, W) in [0, 1]: the class's ``Linear`` weights times the feature
    map entering the global average pool. Only for heads that are ``AdaptiveAvgPool2d(1)`` -> (Flatten,
    Dropout) -> one ``nn.Linear`` giving the logits (torchvision's ResNets, MobileNet v1, EfficientNet);
    else ValueError: use ``grad_cam``."""
    order: list[nn.Module] = []  # leaf modules in the order they ran
    pooled: list[torch.Tensor] = []  # the inputs of global average pools, in the order they ran

    def record(module: nn.Module, inputs: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        order.append(module)
        if is_global_pool(module):
            pooled.append(inputs[0].clone())

    leaves = [m for m in model.modules() if not list(m.children())]
    handles = [m.register_forward_hook(record) for m in leaves]
    x = x.to(model_device(model))
    try:
        with eval_mode(model):
            logits = model(x)
    finally:
        for h in handles:
            h.remove()
    pools = [i for i, m in enumerate(order) if is_global_pool(m)]
    tail = order[pools[-1] + 1:] if pools else []
    linears = [m for m in tail if isinstance(m, nn.Linear)]
    if len(linears) != 1 or not all(isinstance(m, (nn.Linear, *HEAD_PASSTHROUGH)) for m in tail):
        raise ValueError("plain CAM needs a head of global average pooling -> one nn.Linear (as in ResNets); "
                         "this model's head differs: use grad_cam(model, default_cam_layer(model), x)")
    weights = linears[0].weight[class_index(logits, target)]  # (N, C)
    return to_heatmaps(torch.einsum("nchw,nc->nhw", pooled[-1], weights), x.shape[2:])


def overlay(ax, image: Optional[torch.Tensor], heatmap: Optional[torch.Tensor], title: str, alpha: float,
            cmap: str) -> None:
    ax.set_xticks([]), ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(False)
    if image is None:
        return
    img = display_image(image)
    ax.imshow(img, cmap="gray" if img.ndim == 2 else None, vmin=0, vmax=1)
    if heatmap is not None:
        ax.imshow(heatmap.cpu().numpy(), cmap=cmap, alpha=alpha, vmin=0, vmax=1)
    ax.set_title(title, fontsize=8)


def cam_grid_figure(images: Sequence[Optional[torch.Tensor]], heatmaps: Sequence[Optional[torch.Tensor]],
                    titles: Optional[Sequence[str]] = None, ncols: int = 8, row_labels: Sequence[str] = (),
                    title: str = "", alpha: float = 0.45, cmap: str = "jet"):
    """A grid of (C, H, W) ``images`` with their (H, W) ``heatmaps`` in [0, 1] drawn over them (``cmap``
    at ``alpha``), ``ncols`` a row; a None image leaves its cell empty, a None heat map shows the bare
    image. Images in [0, 1] are shown as they are, others min-max scaled per image."""
    n = len(images)
    titles = list(titles) if titles is not None else [""] * n
    nrows = max(1, -(-n // ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(1.6 * ncols, 2.1 * nrows), squeeze=False)  # room for titles
    for i, ax in enumerate(axes.flat):
        overlay(ax, images[i] if i < n else None, heatmaps[i] if i < n else None,
                titles[i] if i < n else "", alpha, cmap)
    for ax, label in zip(axes[:, 0], row_labels):
        ax.set_ylabel(label)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


@torch.no_grad()
def predictions(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(predicted class, its softmax probability) per image, on the CPU."""
    with eval_mode(model):
        probs = model(x.to(model_device(model))).softmax(1).cpu()
    return probs.argmax(1), probs.amax(1)


def class_cam_figures(model: nn.Module, x: torch.Tensor, y: torch.Tensor, class_names: list[str],
                      per_class: int = 8, layer_name: Optional[str] = None) -> dict[str, "plt.Figure"]:
    """Report C's per-class grids: ``{class name: figure}`` for each class in ``y``, its first
    ``per_class`` images with Grad-CAM of the predicted class at ``layer_name`` (default: the last conv),
    titled with the prediction and its probability."""
    layer_name = layer_name or default_cam_layer(model)
    x, y = x.cpu(), y.cpu()
    figures = {}
    for k in torch.unique(y).tolist():
        xs = x[y == k][:per_class]
        pred, prob = predictions(model, xs)
        titles = [f"{class_names[p]} {q:.2f}" for p, q in zip(pred.tolist(), prob.tolist())]
        figures[class_names[k]] = cam_grid_figure(
            xs, grad_cam(model, layer_name, xs), titles, ncols=min(per_class, 8),
            title=f"{class_names[k]}: Grad-CAM at {describe_layer(model, layer_name)} (titles: prediction, probability)")
    return figures


def correct_wrong_figure(model: nn.Module, x: torch.Tensor, y: torch.Tensor, class_names: list[str],
                         count: int = 8, layer_name: Optional[str] = None):
    """Two rows: up to ``count`` correctly and ``count`` wrongly predicted images of ``x`` with Grad-CAM of
    the predicted class at ``layer_name`` (default: the last conv), titled ``true -> predicted``."""
    layer_name = layer_name or default_cam_layer(model)
    pred, _ = predictions(model, x)
    x, y, pred = x.cpu(), y.tolist(), pred.tolist()
    images: list[Optional[torch.Tensor]] = []
    maps: list[Optional[torch.Tensor]] = []
    titles: list[str] = []
    for ok in (True, False):
        idx = [i for i in range(len(y)) if (pred[i] == y[i]) == ok][:count]
        pad = [None] * (count - len(idx))
        images += [x[i] for i in idx] + pad
        maps += (list(grad_cam(model, layer_name, x[idx])) if idx else []) + pad
        titles += [f"{class_names[y[i]]} -> {class_names[pred[i]]}" for i in idx] + [""] * len(pad)
    return cam_grid_figure(images, maps, titles, ncols=count, row_labels=("correct", "wrong"),
                           title=f"Grad-CAM at {describe_layer(model, layer_name)} of the predicted class")


def depth_figure(model: nn.Module, x: torch.Tensor, layer_names: Optional[list[str]] = None,
                 target: Target = None):
    """One row per image of ``x``: the image, then its Grad-CAM at each of ``layer_names`` (default:
    ``depth_layers(model)``, convs at 1/3, 2/3 and the end of the network)."""
    layer_names = layer_names or depth_layers(model)
    maps = grad_cams(model, layer_names, x, target)
    images, heat, titles = [], [], []
    for i in range(len(x)):
        images += [x[i]] * (1 + len(layer_names))
        heat += [None] + [maps[n][i] for n in layer_names]
        titles += ["input"] + layer_names
    return cam_grid_figure(images, heat, titles, ncols=1 + len(layer_names), title="Grad-CAM by depth")
