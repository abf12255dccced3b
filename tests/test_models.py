"""Model registry and report D's small_cnn."""
from __future__ import annotations

import pytest
import torch

from imgexp.data import DataInfo
from imgexp.models import MODELS, create_model
from imgexp.config import ConfigError


def info(c: int, size: int, classes: int = 10) -> DataInfo:
    return DataInfo(c, size, size, classes, [str(i) for i in range(classes)])


def test_small_cnn_matches_report_d_parameter_count(compose_cfg):
    model = create_model(compose_cfg("model=small_cnn").model, info(3, 32))
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert trainable == 692_938
    running_stats = sum(b.numel() for n, b in model.named_buffers() if "running" in n)
    assert trainable + running_stats == 693_834  # what Keras reports


@pytest.mark.parametrize("c,size,classes", [(1, 8, 10), (1, 28, 10), (3, 64, 2), (3, 224, 5)])
def test_small_cnn_adapts_to_input(compose_cfg, c, size, classes):
    model = create_model(compose_cfg().model, info(c, size, classes)).eval()
    assert model(torch.zeros(2, c, size, size)).shape == (2, classes)


@pytest.mark.parametrize("norm", ["batch", "layer", "instance", "group", "none"])
def test_norm_layers(compose_cfg, norm):
    model = create_model(compose_cfg(f"model.norm={norm}").model, info(3, 32))
    out = model(torch.randn(4, 3, 32, 32))
    out.sum().backward()
    has_bn = any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    has_gn = any(isinstance(m, torch.nn.GroupNorm) for m in model.modules())
    assert has_bn == (norm == "batch") and has_gn == (norm in ("layer", "instance", "group"))


def test_unknown_model_name_is_a_config_error(compose_cfg):
    cfg = compose_cfg().model
    cfg.name = "nope"
    with pytest.raises(ConfigError, match="model.name"):
        create_model(cfg, info(1, 8))
    assert "small_cnn" in MODELS
