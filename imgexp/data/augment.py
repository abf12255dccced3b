"""Batched augmentation on the training device: random parameters per sample, one op per batch.

Every transform of a config (random resized crop, rotation, shift, shear, zoom, flips, pad-and-crop) is
composed into one 2x3 matrix per sample that maps output pixels to input pixels, as Keras'
``ImageDataGenerator`` does; the whole batch is then resampled bilinearly at once, at the output size
(smaller than the input where the images are stored larger than they are trained on): by ``grid_sample``
when the matrices rotate or shear, else (crops, flips, shifts, zoom) row by row and column by column
(:func:`resample_axes`), the same result 2-3x faster on a CPU.
"""
from __future__ import annotations

import math
from functools import lru_cache
from typing import Callable, Optional

import torch
import torch.nn.functional as F

from imgexp.data.schema import AugmentationConfig

BatchAugment = Callable[[torch.Tensor], torch.Tensor]

# cfg.fill (Keras' fill_mode names) -> grid_sample's padding_mode
PADDING_MODES = {"constant": "zeros", "nearest": "border", "reflect": "reflection"}


def random_affine(cfg, n: int, height: int, width: int, generator: torch.Generator) -> torch.Tensor:
    """(n, 2, 3) matrices in ``affine_grid``'s normalized coordinates, one random draw per sample
    (always 9 uniforms each, so the random stream does not depend on which transforms are on).

    In centred pixel coordinates, input = rotation @ shear @ diag(zoom * flip) @ output + shift, with
    Keras' matrices (shear = [[1, -sin s], [0, cos s]]): the linear part's columns are
    zoom * flip_x * (cos a, sin a) and zoom * flip_y * (-sin b, cos b), where b = a + s.
    """
    u = torch.rand(n, 9, generator=generator, dtype=torch.float64)
    sym = 2 * u - 1  # uniform in [-1, 1)
    a = torch.deg2rad(cfg.rotation * sym[:, 0])
    b = a + torch.deg2rad(cfg.shear * sym[:, 1])
    flip = torch.where((u[:, 2:4] < 0.5) & torch.tensor([cfg.hflip, cfg.vflip]), -1.0, 1.0)
    sx, sy = ((1 + cfg.zoom * sym[:, 4:5]) * flip).unbind(1)
    crop = torch.floor(u[:, 5:7] * (2 * cfg.crop_padding + 1)) - cfg.crop_padding  # whole pixels
    size = torch.tensor([width, height], dtype=torch.float64)
    tx, ty = ((cfg.translate * sym[:, 7:9] * size + crop) * 2 / size).unbind(1)
    # normalized = pixel / (size / 2), so off-diagonal terms pick up the aspect ratio
    rows = [sx * a.cos(), -sy * b.sin() * height / width, tx, sx * a.sin() * width / height, sy * b.cos(), ty]
    return torch.stack(rows, 1).view(n, 2, 3).float()


def resized_crops(cfg, n: int, height: int, width: int, generator: torch.Generator) -> torch.Tensor:
    """(n, 2, 3) maps from a crop's normalized coordinates to the input's: crops drawn per sample as
    torchvision's ``RandomResizedCrop`` draws them (area fraction uniform in ``cfg.crop_scale``, aspect
    log-uniform in ``cfg.crop_ratio``, whole pixels, 10 tries; failing those, the centre crop nearest the
    ratio range). 22 uniforms per sample."""
    u = torch.rand(n, 22, generator=generator, dtype=torch.float64)
    (s0, s1), (r0, r1) = cfg.crop_scale, cfg.crop_ratio
    area = height * width * (s0 + (s1 - s0) * u[:, :10])
    aspect = torch.exp(math.log(r0) + (math.log(r1) - math.log(r0)) * u[:, 10:20])
    w, h = torch.round(torch.sqrt(area * aspect)), torch.round(torch.sqrt(area / aspect))
    ok = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = ok.long().argmax(1, keepdim=True)  # the first try that fits
    found = ok.any(1)
    ratio = width / height
    fw, fh = ((width, round(width / r0)) if ratio < r0 else (round(height * r1), height) if ratio > r1
              else (width, height))
    w = torch.where(found, w.gather(1, first)[:, 0], float(fw))
    h = torch.where(found, h.gather(1, first)[:, 0], float(fh))
    top = torch.where(found, torch.floor(u[:, 20] * (height - h + 1)), torch.div(height - h, 2, rounding_mode="floor"))
    left = torch.where(found, torch.floor(u[:, 21] * (width - w + 1)), torch.div(width - w, 2, rounding_mode="floor"))
    zero = torch.zeros_like(w)
    rows = [w / width, zero, (2 * left + w) / width - 1, zero, h / height, (2 * top + h) / height - 1]
    return torch.stack(rows, 1).view(n, 2, 3).float()


def center_crop(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """The centre ``size`` (H, W) of a batch (torchvision's ``CenterCrop``); the batch itself if that is its size."""
    h, w = x.shape[-2:]
    top, left = int(round((h - size[0]) / 2.0)), int(round((w - size[1]) / 2.0))
    return x[..., top : top + size[0], left : left + size[1]]


def source_pixels(coords: torch.Tensor, size: int, padding_mode: str) -> tuple[torch.Tensor, ...]:
    """For normalized input coordinates ``coords`` (n, m) along an axis of ``size`` pixels: the two pixels
    each output pixel blends and their weights, as ``grid_sample(align_corners=False)`` computes them
    (zeros: a pixel outside the image weighs 0; border: coordinates clipped; reflection: mirrored)."""
    p = ((coords + 1) * size - 1) / 2
    if padding_mode == "reflection":  # about -0.5 and size - 0.5, as torch's reflect_coordinates
        p = (p + 0.5).abs()
        flips, extra = torch.div(p, size, rounding_mode="floor"), torch.remainder(p, size)
        p = torch.where(flips % 2 == 0, extra, size - extra) - 0.5
    if padding_mode != "zeros":
        p = p.clamp(0, size - 1)
    i0 = torch.floor(p)
    w1 = p - i0
    w0, i1 = 1 - w1, i0 + 1
    if padding_mode == "zeros":
        w0, w1 = w0 * ((i0 >= 0) & (i0 < size)), w1 * ((i1 >= 0) & (i1 < size))
    clamp = (lambda i: i.clamp(0, size - 1).long())
    return clamp(i0), clamp(i1), w0.float(), w1.float()


def resample_axes(x: torch.Tensor, theta: torch.Tensor, size: tuple[int, int], padding_mode: str) -> torch.Tensor:
    """``grid_sample(x, affine grid of theta, bilinear, align_corners=False)`` at ``size`` for matrices
    without rotation or shear (``theta[:, 0, 1] == theta[:, 1, 0] == 0``): rows are picked (one
    ``index_select`` of whole rows, uint8 or float ``x``) and blended, then columns; float out."""
    n, c, h, w = x.shape
    ys, xs = ((torch.arange(s, device=x.device, dtype=theta.dtype) * 2 + 1) / s - 1 for s in size)
    r0, r1, v0, v1 = source_pixels(theta[:, 1, 1:2] * ys + theta[:, 1, 2:3], h, padding_mode)
    first = (torch.arange(n * c, device=x.device).view(n, c, 1) * h)  # row 0 of each image's channel

    def rows(r: torch.Tensor) -> torch.Tensor:
        return x.reshape(n * c * h, w).index_select(0, (first + r[:, None, :]).flatten()).view(n, c, size[0], w).float()

    x = rows(r0).mul_(v0[:, None, :, None]).addcmul_(rows(r1), v1[:, None, :, None])
    c0, c1, u0, u1 = source_pixels(theta[:, 0, 0:1] * xs + theta[:, 0, 2:3], w, padding_mode)

    def cols(i: torch.Tensor) -> torch.Tensor:
        return x.gather(3, i[:, None, None, :].expand(n, c, size[0], size[1]))

    return cols(c0).mul_(u0[:, None, None, :]).addcmul_(cols(c1), u1[:, None, None, :])


@lru_cache(maxsize=8)
def pixel_centres(height: int, width: int, device: torch.device) -> torch.Tensor:
    """(H, W, 2) normalized (x, y) of the pixel centres, as ``affine_grid(align_corners=False)`` uses."""
    ys, xs = ((torch.arange(s, device=device) * 2 + 1) / s - 1 for s in (height, width))
    return torch.stack([xs.expand(height, width), ys[:, None].expand(height, width)], -1)


def build_augment(cfg, seed: int, device: torch.device, size: Optional[tuple[int, int]] = None
                  ) -> Optional[BatchAugment]:
    """A function mapping (N, C, H, W) batches in 0..255 (uint8 or float) to augmented float ones of ``size``
    (H, W; default: the input's), or None for no-op configs. Without a random resized crop, a larger input is
    first cut to its centre ``size``.

    Parameters come from a CPU generator seeded with ``seed``, the function's ``generator`` attribute (the
    same stream whatever ``device`` the batches are on; the matrices follow each batch to its device);
    ``cfg.fill`` says what enters from outside the image: 0 (constant), the edge pixel (nearest) or
    the mirror image (reflect).
    """
    if not any((cfg.rotation, cfg.translate, cfg.shear, cfg.zoom, cfg.hflip, cfg.vflip, cfg.crop_padding,
                cfg.crop_scale)):
        return None
    cfg = AugmentationConfig(**cfg)  # plain attributes: each DictConfig read costs ~25 us, every batch
    generator = torch.Generator().manual_seed(seed)
    padding_mode = PADDING_MODES[cfg.fill]
    axis_aligned = not (cfg.rotation or cfg.shear)

    def augment(x: torch.Tensor) -> torch.Tensor:
        n = len(x)
        h, w = size or x.shape[-2:]
        if not cfg.crop_scale:
            x = center_crop(x, (h, w))
        theta = random_affine(cfg, n, h, w, generator)
        if cfg.crop_scale:  # then take the output frame to the crop's place in the input
            crop = resized_crops(cfg, n, *x.shape[-2:], generator)
            theta = crop[:, :, :2] @ theta  # [S A | S t], then + T
            theta[:, :, 2] += crop[:, :, 2]
        theta = theta.to(x.device)
        if axis_aligned:
            return resample_axes(x, theta, (h, w), padding_mode)
        x = x.float()
        # = F.affine_grid(theta, (n, c, h, w), align_corners=False), several times faster on CPU; multiply-adds, not
        # a matmul, which CUDA would round to TF32 (trainer.tf32): 1.95 of 255 apart from the CPU's on an H200
        centres, t = pixel_centres(h, w, x.device)[None, :, :, None], theta[:, None, None]  # (1,H,W,1,2), (N,1,1,2,3)
        grid = centres[..., 0] * t[..., 0] + centres[..., 1] * t[..., 1] + t[..., 2]
        return F.grid_sample(x, grid, mode="bilinear", padding_mode=padding_mode, align_corners=False)

    augment.generator = generator  # type: ignore[attr-defined]  (checkpointed with the training loader)
    return augment
