"""The model zoo: every model in conf/model/ builds, trains a step and adapts to the data; the registry's
pretrained / weights / freeze_backbone handling."""
from __future__ import annotations

import importlib
import sys
import urllib.error

import pytest
import torch
import torchvision
from hydra.errors import ConfigCompositionException
from torch import nn

from imgexp.config import ConfigError
from imgexp.data import DataInfo
from imgexp.models import MODELS, SCHEMAS, create_model, register_model
from imgexp.models.registry import HEADS
from imgexp.train import Schedule, Trainer

from conftest import CONF, SLOW_MODELS, run_cli

NAMES = sorted(p.stem for p in (CONF / "model").glob("*.yaml"))
SIZED = [pytest.param(n, marks=pytest.mark.slow) if n in SLOW_MODELS else n for n in NAMES]


def info(c: int, size: int, classes: int = 10) -> DataInfo:
    return DataInfo(c, size, size, classes, [str(i) for i in range(classes)])


def first_conv(model: nn.Module) -> nn.Conv2d:
    return next(m for m in model.modules() if isinstance(m, nn.Conv2d))


def trainable(model: nn.Module) -> set[str]:
    return {n for n, p in model.named_parameters() if p.requires_grad}


def test_every_yaml_is_a_registered_model():
    assert set(NAMES) == set(MODELS)


def check_train_step(model: nn.Module, c: int, size: int, classes: int) -> None:
    """Forward + backward on 2 images in train mode: logits' shape, finite gradients on the first conv."""
    x, y = torch.randn(2, c, size, size), torch.tensor([0, classes - 1])
    logits = model.train()(x)
    loss = nn.functional.cross_entropy(logits, y)
    if hasattr(model, "auxiliary_loss"):  # GoogLeNet's auxiliary heads train too
        loss = loss + model.auxiliary_loss(y)
    loss.backward()
    assert logits.shape == (2, classes)
    conv = first_conv(model)
    assert conv.in_channels == c
    assert conv.weight.grad is not None and torch.isfinite(conv.weight.grad).all() and conv.weight.grad.any()


@pytest.mark.parametrize("name", SIZED)
def test_trains_at_32px(compose_cfg, name):
    check_train_step(create_model(compose_cfg(f"model={name}").model, info(3, 32)), 3, 32, 10)


@pytest.mark.parametrize("name", SIZED)
def test_trains_at_224px(compose_cfg, name):
    check_train_step(create_model(compose_cfg(f"model={name}").model, info(3, 224, 5)), 3, 224, 5)


@pytest.mark.parametrize("name", SIZED)
def test_mnist_size(compose_cfg, name):
    """1x28x28; test_config.py trains every model on the default data, 1x8x8 digits."""
    model = create_model(compose_cfg(f"model={name}").model, info(1, 28)).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10)


def test_resnet18_small_input_is_the_cifar_variant(compose_cfg):
    cfg = compose_cfg("model=resnet18").model
    model = create_model(cfg, info(3, 32))
    conv = model.conv1
    assert (conv.kernel_size, conv.stride, conv.padding) == ((3, 3), (1, 1), (1, 1))
    assert isinstance(model.maxpool, nn.Identity)
    assert not any(isinstance(m, nn.MaxPool2d) for m in model.modules())
    assert sum(p.numel() for p in model.parameters()) == 11_173_962
    big = create_model(cfg, info(3, 224))
    assert (big.conv1.kernel_size, big.conv1.stride) == ((7, 7), (2, 2)) and isinstance(big.maxpool, nn.MaxPool2d)


def test_vgg_style_depth(compose_cfg):
    def build(blocks: int, convs: int) -> nn.Module:
        cfg = compose_cfg("model=vgg_style", f"model.blocks={blocks}", f"model.convs_per_block={convs}").model
        return create_model(cfg, info(3, 32))

    params = {}
    for blocks, convs in [(2, 1), (2, 2), (2, 3), (3, 2), (4, 2)]:
        model = build(blocks, convs)
        convs_found = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
        assert len(convs_found) == blocks * convs
        assert [c.out_channels for c in convs_found[::convs]] == [32, 64, 128, 256][:blocks]
        assert sum(isinstance(m, nn.MaxPool2d) for m in model.modules()) == blocks
        params[blocks, convs] = sum(p.numel() for p in model.parameters())
    assert len(set(params.values())) == len(params)
    assert build(4, 3)(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_schema_rejects_unknown_model_keys(compose_cfg):
    with pytest.raises(ConfigCompositionException, match="blockz"):
        compose_cfg("model=vgg_style", "model.blockz=3")


def test_dropout_only_where_meaningful(compose_cfg):
    assert compose_cfg("model=vgg16", "model.dropout=0.3").model.dropout == 0.3
    with pytest.raises(ConfigCompositionException, match="dropout"):
        compose_cfg("model=resnet18", "model.dropout=0.3")


def test_googlenet_auxiliary_losses_join_the_training_loss(compose_cfg, tmp_path):
    model = create_model(compose_cfg("model=googlenet").model, info(3, 32))
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    ce = nn.CrossEntropyLoss()

    torch.manual_seed(0)  # same dropout masks in both forward passes
    logits = model.train()(x)
    assert logits.shape == (4, 10)  # plain logits; the auxiliary ones are kept for the loss
    aux1, aux2 = model.aux
    main = ce(logits, y).item()
    expected = main + 0.3 * (ce(aux1, y) + ce(aux2, y)).item()

    torch.manual_seed(0)
    frozen = torch.optim.SGD(model.parameters(), lr=0.0)  # a step that changes nothing
    trainer = Trainer(model, ce, frozen, Schedule(frozen, None), [(x, y)], [], [], epochs=1,
                      checkpoint_dir=tmp_path, progress=False)
    metrics = trainer.train_epoch(1)
    assert metrics["train/loss"] == pytest.approx(expected, rel=1e-5)
    assert metrics["train/loss"] > main
    assert model.aux1.fc2.weight.grad.abs().sum() > 0  # the auxiliary classifiers train too

    assert model.eval()(x).shape == (4, 10)  # eval mode: plain logits


@pytest.fixture
def hub_dir(tmp_path, monkeypatch):
    """An empty torch hub cache, and no network: a download fails as it does offline."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    def offline(url, *args, **kwargs):
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    return tmp_path / "hub" / "checkpoints"


def test_pretrained_offline_names_the_cache_file(compose_cfg, hub_dir):
    with pytest.raises(ConfigError) as err:
        create_model(compose_cfg("model=resnet18", "model.pretrained=true").model, info(3, 32))
    assert err.value.key == "model.pretrained"
    assert str(hub_dir / "resnet18-f37072fd.pth") in str(err.value)
    assert "\n" not in str(err.value)


def test_pretrained_only_for_torchvision_models(compose_cfg, hub_dir):
    with pytest.raises(ConfigError, match="model.pretrained: no pretrained weights for mobilenet_v1"):
        create_model(compose_cfg("model=mobilenet_v1", "model.pretrained=true").model, info(3, 32))


def test_pretrained_from_the_cache(compose_cfg, hub_dir, caplog):
    """A stand-in for the ImageNet file: loaded except the head; an RGB stem is averaged for 1 channel;
    a small-input stem that no longer fits keeps its fresh init, with a warning."""
    imagenet = torchvision.models.resnet18().state_dict()
    hub_dir.mkdir(parents=True)
    torch.save(imagenet, hub_dir / "resnet18-f37072fd.pth")
    cfg = compose_cfg("model=resnet18", "model.pretrained=true").model

    gray = create_model(cfg, info(1, 224, 5))
    assert torch.equal(gray.layer3[1].conv2.weight, imagenet["layer3.1.conv2.weight"])
    assert torch.allclose(gray.conv1.weight, imagenet["conv1.weight"].sum(1, keepdim=True))
    assert gray.fc.out_features == 5

    small = create_model(cfg, info(3, 32, 5))
    assert torch.equal(small.layer1[0].conv1.weight, imagenet["layer1.0.conv1.weight"])
    assert small.conv1.kernel_size == (3, 3)
    assert "conv1.weight" in caplog.text and "fc." not in caplog.text


def test_weights_load_a_saved_state_dict(compose_cfg, tmp_path):
    source = create_model(compose_cfg("model=lenet").model, info(1, 28))
    torch.save(source.state_dict(), tmp_path / "lenet.pt")
    cfg = compose_cfg("model=lenet", f"model.weights={tmp_path / 'lenet.pt'}").model
    loaded = create_model(cfg, info(1, 28))
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in source.state_dict().items())

    with pytest.raises(ConfigError, match=r"model.weights: .*does not fit.*wrong shape 0.0.weight"):
        create_model(cfg, info(3, 28))
    torch.save({"extra": torch.zeros(1), **source.state_dict()}, tmp_path / "lenet.pt")
    with pytest.raises(ConfigError, match="unexpected extra"):
        create_model(cfg, info(1, 28))
    cfg.weights = str(tmp_path / "missing.pt")
    with pytest.raises(ConfigError, match="model.weights: cannot load"):
        create_model(cfg, info(1, 28))


@pytest.mark.parametrize("name,heads", [
    ("resnet18", {"fc"}), ("googlenet", {"fc", "aux1.fc2", "aux2.fc2"}), ("small_cnn", {"6"}),
    ("mobilenet_v3_small", {"classifier.3"}), ("vgg_style", {"4"}),
])
def test_freeze_backbone_leaves_only_the_head_trainable(compose_cfg, name, heads):
    model = create_model(compose_cfg(f"model={name}", "model.freeze_backbone=true").model, info(3, 32))
    assert trainable(model) == {f"{h}.{p}" for h in heads for p in ("weight", "bias")}


TINY_NET = '''
from torch import nn

from imgexp.models import register_model


@register_model
def tiny_net(in_channels: int, num_classes: int, image_size: tuple[int, int], width: int = 8) -> nn.Module:
    return nn.Sequential(nn.Conv2d(in_channels, width, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(width, num_classes))
'''


@pytest.fixture
def tiny_net(tmp_path, monkeypatch):
    """The README's recipe: one builder in a module of one's own, one YAML in a config folder of one's own."""
    (tmp_path / "my_models.py").write_text(TINY_NET)
    (tmp_path / "conf" / "model").mkdir(parents=True)
    (tmp_path / "conf" / "model" / "tiny_net.yaml").write_text(
        "# A one-conv test model.\n# python -m imgexp model=tiny_net\ndefaults:\n  - /schema/model/tiny_net@_here_\n"
        "  - _self_\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.import_module("my_models")
    yield f"hydra.searchpath=[file://{tmp_path / 'conf'}]"
    for registry in (MODELS, HEADS, SCHEMAS, sys.modules):  # the zoo as it was
        registry.pop("tiny_net" if registry is not sys.modules else "my_models")


def test_a_model_is_one_function_and_one_yaml(tiny_net, tmp_path, caplog):
    proc = run_cli("model=tiny_net", "model.width=4", tiny_net, "epochs=1", "tracking=none", "analysis=none",
                   "progress=false", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "tiny_net on digits (1x8x8, 10 classes): 90 trainable parameters" in proc.stdout  # 4 3x3 filters
    # its schema comes from the signature: a typed key with its default, and nothing else
    assert SCHEMAS["tiny_net"]().width == 8
    bad = run_cli("model=tiny_net", "model.width=wide", tiny_net, "tracking=none", cwd=tmp_path)
    assert bad.returncode == 1 and "model.width=wide" in bad.stderr
    bad = run_cli("model=tiny_net", "model.depth=3", tiny_net, "tracking=none", cwd=tmp_path)
    assert bad.returncode == 1 and "model.depth" in bad.stderr

    register_model(MODELS["tiny_net"], name="tiny_net")  # the same name again: timm's warning, not silence
    assert "model 'tiny_net' registered again: my_models.tiny_net replaces my_models.tiny_net" in caplog.text
