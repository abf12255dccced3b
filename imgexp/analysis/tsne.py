"""t-SNE of what chosen layers see: hooked layer outputs -> PCA (to 50 dims) -> t-SNE -> scatter by class.

``layer_features`` collects the vectors, ``tsne_embed`` embeds them, ``embedding_figure`` /
``embedding_html`` draw an embedding; ``tsne_figure`` / ``tsne_html`` do the last two steps at once.
Figures are the caller's to close (``plt.close(fig)``).
"""
from __future__ import annotations

from typing import Iterable, Optional, Union

import numpy as np
import torch
from torch import nn

from imgexp.analysis.common import check_ran, eval_mode, hooked, model_device, modules_of
from imgexp.analysis.pyplot import plt

Batches = Iterable[tuple[torch.Tensor, torch.Tensor]]
PCA_DIMS = 50  # features wider than this are reduced by PCA before t-SNE
CHUNK = 256  # images per forward pass when given a tensor


def default_layers(model: nn.Module) -> list[str]:
    """Report D's layer set: the first and last ``nn.Conv2d`` and the first and last ``nn.Linear``
    (module names, duplicates dropped)."""
    convs, dense = modules_of(model, nn.Conv2d), modules_of(model, nn.Linear)
    return list(dict.fromkeys(convs[:1] + convs[-1:] + dense[:1] + dense[-1:]))


@torch.no_grad()
def layer_features(
    model: nn.Module, layers: list[str], data: Union[torch.Tensor, Batches], max_points: int = 2000, seed: int = 0
) -> tuple[dict[str, np.ndarray], Optional[np.ndarray]]:
    """``({layer: (n, D) float32 array}, labels (n,) or None)``: each layer's output per image, in eval
    mode; 4-d (conv) maps are global-average-pooled to (N, C), other outputs flattened. ``data`` is an
    (N, C, H, W) tensor (labels None) or batches of ``(x, y)``, which are all run; ``n = min(N,
    max_points)`` rows are a random sample (``seed``), as loaders may be sorted by class."""
    batches = ((x, None) for x in data.split(CHUNK)) if isinstance(data, torch.Tensor) else data
    device = model_device(model)
    feats: dict[str, list[torch.Tensor]] = {name: [] for name in layers}
    labels: list[torch.Tensor] = []

    def keep(name: str, out: torch.Tensor) -> None:
        vec = out.mean((2, 3)) if out.dim() == 4 else out.flatten(1)
        feats[name].append(vec.to("cpu", torch.float32, copy=True))  # a copy: later in-place ops can't touch it

    with eval_mode(model), hooked(model, layers, keep):
        for x, y in batches:
            model(x.to(device))
            if y is not None:
                labels.append(y.cpu())
    check_ran(layers, [name for name, f in feats.items() if f])
    n = sum(len(f) for f in feats[layers[0]])
    idx = np.arange(n)
    if n > max_points:
        idx = np.sort(np.random.default_rng(seed).choice(n, max_points, replace=False))
    out = {name: torch.cat(f).numpy()[idx] for name, f in feats.items()}
    return out, (torch.cat(labels).numpy()[idx] if labels else None)


def tsne_embed(features: np.ndarray, dims: int = 2, seed: int = 0, n_jobs: int = -1) -> np.ndarray:
    """(N, dims) t-SNE embedding of (N, D) features: PCA to 50 dims first when D > 50, PCA init, fixed
    ``seed``, ``n_jobs`` cores (-1: all), 500 iterations (half scikit-learn's default: the clusters have
    settled by then on the runs we looked at, and it halves the time)."""
    from sklearn.decomposition import PCA  # here: importing scikit-learn costs every run a second
    from sklearn.manifold import TSNE

    x = np.asarray(features, dtype=np.float32)
    if x.shape[1] > PCA_DIMS and len(x) > PCA_DIMS:
        x = PCA(PCA_DIMS, random_state=seed).fit_transform(x)
    perplexity = min(30.0, (len(x) - 1) / 3)  # sklearn requires perplexity < n_samples
    return TSNE(dims, perplexity=perplexity, init="pca", random_state=seed, n_jobs=n_jobs,
                max_iter=500).fit_transform(x)


def class_colors(num_classes: int) -> np.ndarray:
    """(num_classes, 4) RGBA colours: tab10 / tab20 up to 20 classes, turbo beyond."""
    if num_classes <= 20:
        return plt.get_cmap("tab10" if num_classes <= 10 else "tab20")(np.arange(num_classes))
    return plt.get_cmap("turbo")(np.linspace(0, 1, num_classes))


def embedding_figure(points: np.ndarray, labels: np.ndarray, class_names: list[str], title: str = ""):
    """A scatter of (N, 2) or (N, 3) ``points`` coloured by class, one collection per class present
    (legend up to 20 classes)."""
    dims = points.shape[1]
    fig = plt.figure(figsize=(8, 6.5))
    ax = fig.add_subplot(projection="3d" if dims == 3 else None)
    colors = class_colors(len(class_names))
    for k in np.unique(labels):
        p = points[labels == k]
        ax.scatter(*p.T, s=6 if dims == 2 else 10, color=colors[k], label=class_names[k], alpha=0.8, linewidths=0)
    if len(class_names) <= 20:
        ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), markerscale=3, frameon=False)
    ax.set_title(title)
    ax.set_xticks([]), ax.set_yticks([])
    if dims == 3:
        ax.set_zticks([])
    fig.tight_layout()
    return fig


def embedding_html(points: np.ndarray, labels: np.ndarray, class_names: list[str], title: str = "") -> str:
    """A self-contained interactive 3-d scatter page (plotly, its JavaScript embedded: works offline):
    one trace per class (click the legend to hide one), hover shows class and sample index."""
    import plotly.graph_objects as go

    colors = class_colors(len(class_names))
    fig = go.Figure(layout=dict(title=title, height=750, legend=dict(itemsizing="constant"),
                                scene=dict(xaxis_title="", yaxis_title="", zaxis_title="")))
    for k in np.unique(labels):
        idx = np.flatnonzero(labels == k)
        r, g, b = (255 * colors[k][:3]).astype(int)
        fig.add_trace(go.Scatter3d(
            x=points[idx, 0], y=points[idx, 1], z=points[idx, 2], mode="markers", name=class_names[k],
            marker=dict(size=2.5, color=f"rgb({r},{g},{b})"),
            text=[f"{class_names[k]} (sample {i})" for i in idx], hoverinfo="text",
        ))
    return fig.to_html(include_plotlyjs=True, full_html=True)


def tsne_figure(features: np.ndarray, labels: np.ndarray, class_names: list[str], dims: int = 2, title: str = ""):
    """t-SNE of (N, D) ``features`` in 2 or 3 dims as a scatter coloured by class; ``title`` is the
    caller's (e.g. ``"layer 0.0.0, epoch 6, val/acc 0.71"``)."""
    return embedding_figure(tsne_embed(features, dims), labels, class_names, title)


def tsne_html(features: np.ndarray, labels: np.ndarray, class_names: list[str], title: str = "") -> str:
    """3-d t-SNE of (N, D) ``features`` as a self-contained interactive HTML page (see ``embedding_html``)."""
    return embedding_html(tsne_embed(features, 3), labels, class_names, title)
