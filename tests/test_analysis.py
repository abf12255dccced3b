"""Visual analysis: Grad-CAM finds the square that decides the class, survives in-place ReLUs and equals CAM
on a GAP -> Linear head; t-SNE, feature-map and CAM grids draw what they were given."""
from __future__ import annotations

import copy
import json

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from PIL import Image
from torch import nn

from imgexp.analysis.cam import (cam, cam_grid_figure, class_cam_figures, correct_wrong_figure, default_cam_layer,
                                 depth_figure, depth_layers, grad_cam)
from imgexp.analysis.feature_maps import feature_maps_figure
from imgexp.analysis.tsne import default_layers, layer_features, tsne_figure, tsne_html
from imgexp.data import DataInfo
from imgexp.data.synthetic import square_positions, synthetic
from imgexp.models import create_model

CLASSES, SIZE = 4, 32
NAMES = [f"square{k}" for k in range(CLASSES)]


def squares(seed: int, per_class: int) -> tuple[torch.Tensor, torch.Tensor]:
    """imgexp's synthetic source (a bright square whose position is the class), 1 channel, in [0, 1]."""
    cfg = OmegaConf.create(dict(split_seed=seed, num_classes=CLASSES, samples_per_class=per_class,
                                image_size=SIZE, channels=1))
    images = synthetic(cfg).train
    return images.x.float() / 255, images.y


def small_cnn(**keys) -> nn.Module:
    cfg = OmegaConf.create({"name": "small_cnn", **keys})
    return create_model(cfg, DataInfo(1, SIZE, SIZE, CLASSES, NAMES))


@pytest.fixture(scope="module")
def trained():
    """(model, x_test, y_test): a slim small_cnn (no norm layers, no dense dropout) trained on standardized
    squares, about 5 s. One thread: on a shared 2-core machine two threads of tiny convs are many times
    slower, not faster."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        x, y = squares(seed=0, per_class=48)
        x_test, y_test = squares(seed=1, per_class=16)
        mean, std = x.mean(), x.std()
        x, x_test = (x - mean) / std, (x_test - mean) / std
        model = small_cnn(widths=[16, 32, 64], dense=64, norm="none", dense_dropout=0.0)
        opt = torch.optim.Adam(model.parameters(), 2e-3)
        for _ in range(10):
            model.train()
            for idx in torch.randperm(len(y)).split(32):
                opt.zero_grad()
                F.cross_entropy(model(x[idx]), y[idx]).backward()
                opt.step()
        with torch.no_grad():
            accuracy = (model.eval()(x_test).argmax(1) == y_test).float().mean().item()
        assert accuracy >= 0.95, f"the test model did not learn the squares (accuracy {accuracy:.2f})"
        yield model, x_test, y_test
    finally:
        torch.set_num_threads(threads)


def png(fig, path) -> np.ndarray:
    """Save and close ``fig``; the PNG read back as a grayscale array."""
    fig.savefig(path)
    plt.close(fig)
    return np.asarray(Image.open(path).convert("L"), dtype=float)


def assert_not_blank(pixels: np.ndarray, min_side: int = 200) -> None:
    assert min(pixels.shape) >= min_side and pixels.std() > 10


def test_grad_cam_highlights_the_square_that_decides_the_class(trained):
    model, x, y = trained
    layer = depth_layers(model)[1]  # 2/3 deep, 16x16; the last conv (8x8) lights the square's inner side
    heat = grad_cam(model, layer, x)
    assert heat.shape == (len(x), SIZE, SIZE) and heat.min() >= 0 and heat.max() <= 1
    near = torch.zeros(len(y), SIZE, SIZE, dtype=torch.bool)  # the class's square, widened by half a side
    for k, (top, left, side) in enumerate(square_positions(CLASSES, SIZE)):
        m = side // 2
        near[y == k, max(0, top - m):top + side + m, max(0, left - m):left + side + m] = True
    argmax_near = near.flatten(1).gather(1, heat.flatten(1).argmax(1, keepdim=True)).float().mean()
    mean_in = (heat * near).sum((1, 2)) / near.sum((1, 2))
    mean_out = (heat * ~near).sum((1, 2)) / (~near).sum((1, 2))
    assert argmax_near >= 0.8
    assert (mean_in > 3 * mean_out).float().mean() >= 0.75


def test_grad_cam_survives_inplace_relu_and_frozen_layers():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(inplace=True), nn.Conv2d(8, 8, 3, padding=1),
                          nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))
    reference = copy.deepcopy(model)
    for m in reference.modules():
        if isinstance(m, nn.ReLU):
            m.inplace = False
    x = torch.randn(6, 3, 12, 12)
    assert (model[0](x) < 0).any()  # so an in-place ReLU would have changed a stored activation
    for layer in ("0", "2"):
        expected = grad_cam(reference, layer, x)
        assert torch.equal(grad_cam(model, layer, x), expected)
        assert torch.equal(grad_cam(model.requires_grad_(False), layer, x), expected)
        model.requires_grad_(True)
    assert not any(m._forward_hooks for m in model.modules())  # no hook left behind
    with pytest.raises(ValueError, match="no module named 'nope'"):
        grad_cam(model, "nope", x)


def test_cam_equals_grad_cam_on_a_gap_linear_head():
    torch.manual_seed(0)
    model = create_model(OmegaConf.create({"name": "resnet18"}), DataInfo(3, 32, 32, 10, list("0123456789")))
    x = torch.randn(4, 3, 32, 32)
    for target in (None, 3):
        plain = cam(model, x, target)
        assert plain.shape == (4, 32, 32) and plain.amax((1, 2)).eq(1).all()
        torch.testing.assert_close(plain, grad_cam(model, "layer4", x, target), atol=1e-4, rtol=0)
    assert model.training  # mode restored


def test_cam_refuses_an_mlp_head():
    with pytest.raises(ValueError, match="global average pooling -> one nn.Linear"):
        cam(small_cnn(), torch.rand(2, 1, SIZE, SIZE))


def test_default_layers_of_small_cnn():
    model = small_cnn()
    assert default_layers(model) == ["0.0.0", "0.8.0", "3", "6"]  # first/last conv, first/last dense
    assert default_cam_layer(model) == "0.8.0"
    assert depth_layers(model) == ["0.1.0", "0.4.0", "0.8.0"]


def test_layer_features_and_tsne_figures(trained, tmp_path):
    model, x, y = trained
    batches = list(zip(x.split(20), y.split(20)))
    feats, labels = layer_features(model, default_layers(model), batches, max_points=50)
    assert {k: v.shape for k, v in feats.items()} == {"0.0.0": (50, 16), "0.8.0": (50, 64), "3": (50, 64),
                                                    "6": (50, CLASSES)}
    assert (feats["6"].argmax(1) == labels).mean() >= 0.95  # rows and labels stay aligned after sampling
    assert set(labels) == set(range(CLASSES))
    plain, none = layer_features(model, ["6"], x)
    assert none is None and plain["6"].shape == (len(x), CLASSES)

    for dims in (2, 3):
        fig = tsne_figure(feats["0.8.0"], labels, NAMES, dims=dims, title="epoch 6, val/acc 0.71")
        ax = fig.axes[0]
        assert sum(len(c.get_offsets()) for c in ax.collections) == 50 and len(ax.collections) == CLASSES
        assert [t.get_text() for t in ax.get_legend().get_texts()] == NAMES
        assert ax.get_title() == "epoch 6, val/acc 0.71" and (dims == 3) == hasattr(ax, "get_zlim")
        assert_not_blank(png(fig, tmp_path / f"tsne{dims}.png"))


def test_tsne_html_is_a_self_contained_3d_page(trained):
    model, x, y = trained
    feats, labels = layer_features(model, ["3"], [(x, y)], max_points=50)
    html = tsne_html(feats["3"], labels, NAMES, title="epoch 6")
    assert html.lstrip().lower().startswith("<!doctype html>") and '<script src="http' not in html
    call = html[html.rindex("Plotly.newPlot("):]  # newPlot(id, traces, layout, config), after plotly.js
    traces, _ = json.JSONDecoder().raw_decode(call[call.index("["):])
    assert [(t["type"], t["name"]) for t in traces] == [("scatter3d", n) for n in NAMES]
    assert sum(len(t["text"]) for t in traces) == 50


def test_feature_maps_figure(trained, tmp_path):
    model, x, _ = trained
    fig = feature_maps_figure(model, ["0.0.0", "0.4.0"], x[0], max_channels=8)
    assert len(fig.axes) == 2 * 9  # a row per layer: the input column + 8 channels
    assert sum(len(ax.images) for ax in fig.axes) == 1 + 2 * 8
    assert_not_blank(png(fig, tmp_path / "maps.png"))
    fig = feature_maps_figure(model, ["0.4.0"], x[:2], max_channels=100)
    assert len(fig.axes) == 2 * 33  # one row per image, all 32 channels
    plt.close(fig)


def test_cam_grids(trained, tmp_path):
    model, x, y = trained
    figures = class_cam_figures(model, x, y, NAMES, per_class=4)
    assert list(figures) == NAMES
    for fig in figures.values():
        assert sum(len(ax.images) == 2 for ax in fig.axes) == 4  # image + heat map overlay
    assert_not_blank(png(figures.pop(NAMES[0]), tmp_path / "class.png"), min_side=100)
    for fig in figures.values():
        plt.close(fig)

    wrong_labels = y.clone()
    wrong_labels[:3] = (y[:3] + 1) % CLASSES  # the model (accuracy ~1) now errs on three images
    fig = correct_wrong_figure(model, x, wrong_labels, NAMES, count=5)
    overlays = [len(ax.images) == 2 for ax in fig.axes]
    assert len(fig.axes) == 10 and overlays == [True] * 5 + [True] * 3 + [False] * 2
    assert fig.axes[5].get_title() == f"{NAMES[int(wrong_labels[0])]} -> {NAMES[int(y[0])]}"
    assert_not_blank(png(fig, tmp_path / "wrong.png"))

    fig = depth_figure(model, x[::16])
    assert len(fig.axes) == 4 * 4 and [ax.get_title() for ax in fig.axes[:4]] == ["input", *depth_layers(model)]
    assert_not_blank(png(fig, tmp_path / "depth.png"))

    fig = cam_grid_figure(x[:3] * 5 - 2, grad_cam(model, "0.4.0", x[:3]), ncols=2)  # normalized-looking input
    assert len(fig.axes) == 4 and sum(len(ax.images) for ax in fig.axes) == 6
    plt.close(fig)


@pytest.mark.parametrize("tsne_layers,expected", [
    # t-SNE of the first dense layer (module 3); Grad-CAM grids, but no plain CAM: the head is no GAP + linear
    (None, {"plots/tsne/final_3_2d.png", "plots/tsne/final_3_3d.png", "plots/feature_maps.png",
              "plots/cam/correct_vs_wrong.png", "plots/cam/gradcam_depths.png",
              *(f"plots/cam/class_{name}.png" for name in NAMES)}),
    # report D's four layers, 2D only (a new best epoch's sequence uses tsne_artifacts the same way)
    (["report_d"], {f"plots/tsne/final_{layer}_2d.png" for layer in ("0.0.0", "0.8.0", "3", "6")}),
])
def test_the_end_of_run_analysis_draws_each_plot_its_config_asks_for(trained, tsne_layers, expected):
    from imgexp.analysis.report import final_artifacts, tsne_artifacts
    from imgexp.analysis.schema import AnalysisConfig

    model, x, y = trained
    x, y = x[::2], y[::2]  # 32 images, 8 of each class
    cfg = AnalysisConfig(points=32, tsne_layers=tsne_layers, cam_images=2)
    if tsne_layers is None:
        out = final_artifacts(model, x, y, NAMES, cfg, "best epoch 3")
    else:
        out = tsne_artifacts(model, x, y, NAMES, cfg, "final", "best epoch 3", three_d=False)
    assert set(out) == expected
    assert all(isinstance(fig, plt.Figure) for fig in out.values())
    assert all("best epoch 3" in fig.axes[0].get_title() for name, fig in out.items() if "tsne" in name)
    for fig in out.values():
        plt.close(fig)
