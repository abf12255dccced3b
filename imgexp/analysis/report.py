"""What a run draws from its model, as ``{artifact path: Figure or HTML text}``, and how it goes into a run
(:func:`log_artifacts`, which closes the figures). ``cfg`` is the ``analysis`` config group. A run's report
phase and a sweep's end (its best job's analysis) both draw through :func:`analyse_model`."""
from __future__ import annotations

import logging
import time
from typing import Union

import torch
from torch import nn

from imgexp.analysis.cam import cam, cam_grid_figure, class_cam_figures, correct_wrong_figure, depth_figure
from imgexp.analysis.common import describe_layer, modules_of
from imgexp.analysis.feature_maps import feature_maps_figure
from imgexp.analysis.pyplot import plt
from imgexp.analysis.tsne import default_layers, embedding_figure, embedding_html, layer_features, tsne_embed

log = logging.getLogger(__name__)
Artifacts = dict[str, Union[plt.Figure, str]]
CORRECT_WRONG_POOL = 400  # random sampled images searched for right and wrong predictions


def tsne_layers(model: nn.Module, cfg) -> list[str]:
    """``cfg.tsne_layers``; ``[report_d]`` means report D's four layers; None the first dense layer
    (the last conv when the model's only dense layer is its classifier)."""
    if cfg.tsne_layers is None:
        dense = modules_of(model, nn.Linear)
        return dense[:1] if len(dense) > 1 else modules_of(model, nn.Conv2d)[-1:]
    return [name for layer in cfg.tsne_layers
            for name in (default_layers(model) if layer == "report_d" else [layer])]


def tsne_artifacts(model: nn.Module, x: torch.Tensor, y: torch.Tensor, class_names: list[str], cfg,
                   tag: str, title: str, three_d: bool) -> Artifacts:
    """t-SNE of each chosen layer's features: ``plots/tsne/<tag>_<layer>_2d.png`` (and the 3D PNG, and with
    ``cfg.tsne_html`` the interactive 3D page: 4.6 MB, plotly.js embedded so it works offline)."""
    batches = [(x[i : i + 256], y[i : i + 256]) for i in range(0, len(y), 256)]
    features, labels = layer_features(model, tsne_layers(model, cfg), batches, max_points=cfg.points)
    out: Artifacts = {}
    for layer, f in features.items():
        name = f"plots/tsne/{tag}_{layer}"
        heading = f"t-SNE of {describe_layer(model, layer)}, {title}"
        out[f"{name}_2d.png"] = embedding_figure(tsne_embed(f, 2), labels, class_names, heading)
        if three_d:
            points = tsne_embed(f, 3)
            out[f"{name}_3d.png"] = embedding_figure(points, labels, class_names, heading)
            if cfg.tsne_html:
                out[f"{name}_3d.html"] = embedding_html(points, labels, class_names, heading)
    return out


def final_artifacts(model: nn.Module, x: torch.Tensor, y: torch.Tensor, class_names: list[str], cfg,
                    title: str) -> Artifacts:
    """Everything ``cfg`` switches on, for the final (best) model on the sampled test images."""
    out: Artifacts = {}
    if cfg.tsne:
        out |= tsne_artifacts(model, x, y, class_names, cfg, "final", title, cfg.tsne_3d)
    if cfg.cam:
        for name, fig in class_cam_figures(model, x, y, class_names, cfg.cam_images, cfg.cam_layer).items():
            out[f"plots/cam/class_{name}.png"] = fig
        pool = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))[:CORRECT_WRONG_POOL]
        out["plots/cam/correct_vs_wrong.png"] = correct_wrong_figure(
            model, x[pool.to(x.device)], y[pool.to(y.device)], class_names, cfg.cam_images, cfg.cam_layer)
        out["plots/cam/gradcam_depths.png"] = depth_figure(model, x[: min(4, len(x))])
        try:  # plain CAM exists only for global-average-pool + linear heads
            xs = x[: cfg.cam_images]
            out["plots/cam/cam.png"] = cam_grid_figure(xs, cam(model, xs), title="CAM of the predicted class")
        except ValueError:
            pass
    if cfg.feature_maps:
        convs = modules_of(model, nn.Conv2d)
        layers = list(cfg.feature_layers) if cfg.feature_layers else list(dict.fromkeys(convs[:1] + convs[-1:]))
        out["plots/feature_maps.png"] = feature_maps_figure(model, layers, x[:2])
    return out


def log_artifacts(tracker, artifacts: Artifacts) -> None:
    """Figures as PNGs, text (HTML) as files, into ``tracker``'s run (a :class:`~imgexp.tracking.tracker.Tracker`);
    every figure closed."""
    for path, item in artifacts.items():
        if isinstance(item, str):
            tracker.log_text(item, path)
        else:
            tracker.log_figure(item, path)
            plt.close(item)


def analyse_model(tracker, model: nn.Module, sample: tuple[torch.Tensor, torch.Tensor], class_names: list[str],
                  cfg, title: str) -> None:
    """Draw :func:`final_artifacts` of ``model`` (its best weights) on the analysis ``sample`` into ``tracker``'s run."""
    log.info("analysis (%s) of the best model on %d test images...", cfg.name, len(sample[1]))
    began = time.perf_counter()
    log_artifacts(tracker, final_artifacts(model, *sample, class_names, cfg, title))
    log.info("analysis done in %.1f s", time.perf_counter() - began)
