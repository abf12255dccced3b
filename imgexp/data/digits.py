"""scikit-learn's embedded 8x8 digits: the offline default data set."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import torch

from imgexp.data.sources import Images, Source, register_source


def digits_csv() -> Path:
    """The file ``sklearn.datasets.load_digits`` reads, found without importing scikit-learn (a second)."""
    (package,) = importlib.util.find_spec("sklearn").submodule_search_locations
    return Path(package) / "datasets" / "data" / "digits.csv.gz"


@register_source("digits")
def digits(cfg) -> Source:
    table = np.loadtxt(digits_csv(), delimiter=",")  # 1797 rows: 64 pixels, then the label
    # Pixel values are 0..16; scale to 0..255 so every source shares the uint8 image convention.
    x = torch.from_numpy(table[:, :-1].reshape(-1, 1, 8, 8) * (255.0 / 16.0)).round().to(torch.uint8)
    return Source(Images(x, torch.from_numpy(table[:, -1]).long()), [str(c) for c in range(10)])
