"""Feature maps: the activation channels of chosen conv layers for one or a few images."""
from __future__ import annotations

import torch
from torch import nn

from imgexp.analysis.common import check_ran, display_image, eval_mode, hooked, model_device
from imgexp.analysis.pyplot import plt


@torch.no_grad()
def feature_maps_figure(model: nn.Module, layer_names: list[str], x: torch.Tensor, max_channels: int = 16):
    """A grid with one row per (image, layer): the input image (on its first row), then the layer's first
    ``max_channels`` output channels, each scaled to its own range (viridis). ``x`` is one (C, H, W) image
    or a few (N, C, H, W); layers need 4-d outputs. The figure is the caller's to close."""
    x = x[None] if x.dim() == 3 else x
    maps: dict[str, torch.Tensor] = {}

    def keep(name: str, out: torch.Tensor) -> None:
        if out.dim() != 4:
            raise ValueError(f"{name!r} gives {tuple(out.shape)}, not (N, C, h, w) feature maps")
        maps[name] = out.detach().to("cpu", copy=True)  # a copy: later in-place ops can't touch it

    with eval_mode(model), hooked(model, layer_names, keep):
        model(x.to(model_device(model)))
    check_ran(layer_names, maps)
    ncols = 1 + min(max_channels, max(m.shape[1] for m in maps.values()))
    nrows = len(x) * len(layer_names)
    fig, axes = plt.subplots(nrows, ncols, figsize=(1.1 * ncols, 1.2 * nrows), squeeze=False)
    for ax in axes.flat:
        ax.set_xticks([]), ax.set_yticks([])
        ax.set_frame_on(False)
    for i in range(len(x)):
        img = display_image(x[i])
        axes[i * len(layer_names), 0].imshow(img, cmap="gray" if img.ndim == 2 else None, vmin=0, vmax=1)
        axes[i * len(layer_names), 0].set_title(f"image {i}" if len(x) > 1 else "input", fontsize=7)
        for j, name in enumerate(layer_names):
            row = axes[i * len(layer_names) + j]
            channels, h, w = maps[name].shape[1:]
            row[1].set_ylabel(f"{name}\n{channels}x{h}x{w}", fontsize=7)
            for c, ax in enumerate(row[1:1 + min(channels, max_channels)]):
                ax.imshow(maps[name][i, c].numpy(), cmap="viridis")
                ax.set_title(f"ch {c}", fontsize=6)
    fig.tight_layout()
    return fig
