"""Data: a source loads images once, the split is stratified, batches are normalized on the device."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from imgexp.data import digits  # noqa: F401  (registers the source)
from imgexp.data.loader import TensorLoader
from imgexp.data.normalize import channel_stats
from imgexp.data.sources import SOURCES, Images, load_source, register_source
from imgexp.data.split import stratified_split, stratified_subset

__all__ = ["Data", "DataInfo", "Images", "SOURCES", "build", "register_source"]


@dataclass
class DataInfo:
    channels: int
    height: int
    width: int
    num_classes: int
    class_names: list[str]


@dataclass
class Data:
    info: DataInfo
    train: TensorLoader
    val: TensorLoader
    test: TensorLoader


def build(data_cfg, norm_cfg, batch: int, seed: int, device: torch.device) -> Data:
    """Load ``data_cfg``'s source, split it, and return device-resident loaders."""
    images = load_source(data_cfg)
    labels = images.y.numpy()
    if data_cfg.subset is not None:
        keep = torch.from_numpy(stratified_subset(labels, data_cfg.subset, data_cfg.split_seed))
        images = Images(images.x[keep], images.y[keep], images.class_names)
        labels = images.y.numpy()
    parts = stratified_split(labels, data_cfg.val_fraction, data_cfg.test_fraction, data_cfg.split_seed)
    train_idx, val_idx, test_idx = (torch.from_numpy(p) for p in parts)

    mean, std = (t.to(device) for t in channel_stats(norm_cfg.name, images.x[train_idx]))

    def normalize(x: torch.Tensor) -> torch.Tensor:
        return (x.float() - mean) / std

    def loader(idx: torch.Tensor, shuffle: bool) -> TensorLoader:
        x, y = images.x[idx].to(device), images.y[idx].to(device)
        return TensorLoader(x, y, batch, normalize, shuffle=shuffle, seed=seed)

    _, c, h, w = images.x.shape
    info = DataInfo(c, h, w, len(images.class_names), images.class_names)
    return Data(info, loader(train_idx, True), loader(val_idx, False), loader(test_idx, False))
