"""scikit-learn's embedded 8x8 digits: the offline default data set."""
from __future__ import annotations

import torch
from sklearn.datasets import load_digits

from imgexp.data.sources import Images, Source, register_source


@register_source("digits")
def digits(cfg) -> Source:
    bunch = load_digits()
    # Pixel values are 0..16; scale to 0..255 so every source shares the uint8 image convention.
    x = torch.from_numpy(bunch.images * (255.0 / 16.0)).round().to(torch.uint8).unsqueeze(1)
    return Source(Images(x, torch.from_numpy(bunch.target).long()), [str(c) for c in bunch.target_names])
