"""MNIST, Fashion-MNIST, CIFAR-10 and CIFAR-100 through torchvision (``data.download=true`` fetches
them), or from an image-folder copy when ``data.root`` holds ``train/<class>/`` folders."""
from __future__ import annotations

from pathlib import Path
from urllib.error import URLError

import numpy as np
import torch

from imgexp.config import ConfigError
from imgexp.data.folders import class_tree
from imgexp.data.sources import Images, Source, register_source
from imgexp.runtime import checked_torchvision


def as_images(ds) -> Images:
    x = torch.as_tensor(np.asarray(ds.data), dtype=torch.uint8)
    x = x.unsqueeze(1) if x.ndim == 3 else x.permute(0, 3, 1, 2)
    return Images(x.contiguous(), torch.as_tensor(np.asarray(ds.targets), dtype=torch.long))


def load_torchvision(cfg, dataset: str) -> Source:
    torchvision = checked_torchvision()  # only for these sources: importing it costs a second

    dataset_cls = getattr(torchvision.datasets, dataset)
    root = Path(cfg.root or "data").expanduser()
    if (root / "train").is_dir():
        return class_tree(root)
    try:
        train = dataset_cls(str(root), train=True, download=cfg.download)
        test = dataset_cls(str(root), train=False, download=cfg.download)
    except RuntimeError:  # torchvision: "Dataset not found or corrupted ..."
        raise ConfigError("data.root", f"no {dataset_cls.__name__} files in {root}; set data.download=true "
                          f"to fetch them, or point data.root at an image folder with train/<class>/ and "
                          f"test/<class>/") from None
    except (URLError, OSError) as err:
        raise ConfigError("data.download", f"could not download {dataset_cls.__name__} into {root}: {err}") from None
    return Source(as_images(train), list(train.classes), test=as_images(test))


for _name, _cls in {"mnist": "MNIST", "fashion_mnist": "FashionMNIST", "cifar10": "CIFAR10",
                    "cifar100": "CIFAR100"}.items():
    register_source(_name)(lambda cfg, _cls=_cls: load_torchvision(cfg, _cls))
