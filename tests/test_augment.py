"""Batched augmentation: seeded, exact for flips and crops, shape- and range-preserving for every preset."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from imgexp.config import ConfigError, validate
from imgexp.data.schema import AugmentationConfig
from imgexp.data.augment import build_augment, random_affine, resample_axes

from conftest import config_options, run_cli

PRESETS = [option for group, option in config_options() if group == "augmentation"]
CPU = torch.device("cpu")
ATOL = 1e-3  # pixel units (0..255): bilinear sampling exactly at pixel centres, up to float rounding


def aug_cfg(**values):
    return OmegaConf.structured(AugmentationConfig(name="test", **values))


def batch(n=16, c=3, h=12, w=12, seed=0):
    return torch.rand(n, c, h, w, generator=torch.Generator().manual_seed(seed)) * 255


def distances(out, candidates):
    """(K, N): max abs difference between each output sample and each of K candidate batches."""
    return (out.unsqueeze(0) - candidates).abs().flatten(2).amax(2)


def test_noop_configs_are_none(compose_cfg):
    assert build_augment(aug_cfg(rotation=0, translate=0, hflip=False), 0, CPU) is None
    assert build_augment(compose_cfg("augmentation=none").augmentation, 0, CPU) is None


def test_same_seed_same_sequence():
    cfg = aug_cfg(rotation=30, translate=0.2, zoom=0.1, shear=5, hflip=True, crop_padding=2)
    x = batch()
    a, b, c = (build_augment(cfg, seed, CPU) for seed in (0, 0, 1))
    first, second = a(x), a(x)
    assert torch.equal(first, b(x)) and torch.equal(second, b(x))
    assert not torch.equal(first, second), "each call draws new parameters"
    assert not torch.equal(first, c(x)), "another seed, other parameters"


def test_hflip_flips_exactly():
    x = batch(n=256, h=8, w=10)
    out = build_augment(aug_cfg(hflip=True), 0, CPU)(x)
    same, mirrored = distances(out, torch.stack([x, x.flip(-1)])) < ATOL
    assert (same | mirrored).all()
    assert same.any() and mirrored.any()


def test_crop_flip_is_a_shifted_copy(compose_cfg):
    cfg = compose_cfg("augmentation=crop_flip").augmentation
    x, pad, (h, w) = batch(n=64), cfg.crop_padding, (12, 12)
    padded = F.pad(x, (pad,) * 4)  # zeros, as fill=constant
    crops = torch.stack([padded[..., dy : dy + h, dx : dx + w]
                         for dy in range(2 * pad + 1) for dx in range(2 * pad + 1)])
    out = build_augment(cfg, 0, CPU)(x)
    assert out.shape == x.shape
    best, which = distances(out, torch.cat([crops, crops.flip(-1)])).min(0)
    assert (best < ATOL).all(), "every sample is a (mirrored) window of the zero-padded input"
    assert len(which.unique()) > 20, "offsets and flips vary from sample to sample"


def test_grid_is_affine_grid():
    """The batch is resampled on the grid F.affine_grid would build from the same matrices."""
    cfg = aug_cfg(rotation=40, shear=10, zoom=0.2, translate=0.2, hflip=True, vflip=True, crop_padding=3)
    x = batch(n=32, h=10, w=14)
    theta = random_affine(cfg, 32, 10, 14, torch.Generator().manual_seed(0))
    expected = F.grid_sample(x, F.affine_grid(theta, list(x.shape), align_corners=False), align_corners=False)
    torch.testing.assert_close(build_augment(cfg, 0, CPU)(x), expected, atol=ATOL, rtol=0)


@pytest.mark.parametrize("preset", PRESETS)
def test_preset_keeps_shape_dtype_and_range(compose_cfg, preset):
    augment = build_augment(compose_cfg(f"augmentation={preset}").augmentation, 0, CPU)
    if preset == "none":
        assert augment is None
        return
    x = batch(n=32, h=32, w=32)
    out = augment(x)
    assert out.shape == x.shape and out.dtype == torch.float32
    assert out.min() >= -ATOL and out.max() <= 255 + ATOL
    assert not torch.allclose(out, x)


def test_fill_modes_and_overrides(compose_cfg):
    cfg = compose_cfg("augmentation=keras_like", "augmentation.rotation=10", "augmentation.fill=reflect")
    assert cfg.augmentation.rotation == 10 and cfg.augmentation.fill == "reflect"
    assert build_augment(cfg.augmentation, 0, CPU)(batch()).shape == batch().shape
    ones = torch.full((8, 1, 8, 8), 255.0)
    zeros_in = build_augment(aug_cfg(translate=0.4, fill="constant"), 0, CPU)(ones)
    edges_in = build_augment(aug_cfg(translate=0.4, fill="nearest"), 0, CPU)(ones)
    assert zeros_in.min() < 1, "zeros come in from outside"
    assert torch.allclose(edges_in, ones), "edge pixels come in from outside"
    with pytest.raises(ConfigError, match="augmentation.fill"):
        validate(compose_cfg("augmentation.fill=wrap"))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_matches_cpu(monkeypatch):
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", True)  # as a training run has it (trainer.tf32)
    cfg = aug_cfg(rotation=40, shear=5, zoom=0.2, translate=0.1, hflip=True, vflip=True, crop_padding=4)
    x = batch(n=128, h=32, w=32)
    on_gpu = build_augment(cfg, 0, torch.device("cuda"))(x.cuda())
    assert on_gpu.is_cuda
    torch.testing.assert_close(on_gpu.cpu(), build_augment(cfg, 0, CPU)(x), atol=0.05, rtol=0)


@pytest.mark.slow
def test_cli_trains_with_augmentation(tmp_path):
    """The real command line: overrides parse, and every training batch of an epoch goes through it."""
    proc = run_cli("augmentation=keras_like", "augmentation.shear=11.5", "epochs=1", "data.subset=300",
                   "tracking=none", "analysis=none", "progress=false", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]


@pytest.mark.parametrize("mode", ["zeros", "border", "reflection"])
def test_resampling_rows_then_columns_equals_grid_sample(mode):
    """Crops, flips, shifts and zoom (no rotation or shear) take the separable path: the same pixels as
    grid_sample, from uint8 or float input, including what enters from outside the image."""
    g = torch.Generator().manual_seed(1)
    x = torch.randint(0, 256, (16, 3, 40, 30), generator=g, dtype=torch.uint8)
    theta = torch.zeros(16, 2, 3)
    theta[:, 0, 0] = torch.rand(16, generator=g) * 2.4 - 1.2  # flips and zoom in or out, per sample
    theta[:, 1, 1] = torch.rand(16, generator=g) * 1.4 + 0.1
    theta[:, :, 2] = torch.rand(16, 2, generator=g) * 1.2 - 0.6  # shifted partly out of the image
    expected = F.grid_sample(x.float(), F.affine_grid(theta, (16, 3, 24, 20), align_corners=False), mode="bilinear",
                             padding_mode=mode, align_corners=False)
    for source in (x, x.float()):
        torch.testing.assert_close(resample_axes(source, theta, (24, 20), mode), expected, atol=2e-3, rtol=0)
