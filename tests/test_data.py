"""Data sources on small generated folders and on a slice of the shared CIFAR-10 folder."""
from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

import imgexp.data.decode
from imgexp.config import ConfigError
from imgexp.data import StreamLoader, TensorLoader, build, folders
from imgexp.data.torchvision_sets import as_images

from conftest import CLASSES, class_tree, write_image

SHARED_CIFAR = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "cifar10"


def data_cfg(compose_cfg, *overrides):
    return compose_cfg(*overrides, "device=cpu")


def build_from(cfg):
    return build(cfg.data, cfg.augmentation, cfg.normalization, cfg.batch, cfg.seed, torch.device("cpu"))


def all_batches(loader):
    xs, ys = zip(*loader)
    return torch.cat(xs), torch.cat(ys)


def test_imagefolder_with_split_folders(compose_cfg, tmp_path):
    root = class_tree(tmp_path / "imgs")
    cfg = data_cfg(compose_cfg, "data=imagefolder", f"data.root={root}", f"data.cache_dir={tmp_path / 'c'}",
                   "normalization=none", "data.val_fraction=0.2")
    data = build_from(cfg)
    assert data.info.class_names == CLASSES and (data.info.height, data.info.channels) == (16, 3)
    x, y = all_batches(data.test)
    assert Counter(y.tolist()) == {0: 10, 1: 10, 2: 10}  # test/ is used as is
    assert torch.equal(x[:, 0, 0, 0], (80 * y + 20).float()), "labels match the folder each image came from"
    assert sum(len(b[1]) for b in data.train) == 24 and sum(len(b[1]) for b in data.val) == 6


@pytest.mark.parametrize("test_fraction", [None, 0])
def test_a_train_and_val_folder_tests_on_a_carved_split_or_on_val(compose_cfg, tmp_path, caplog, test_fraction):
    """torchvision's layout, train/ and val/ only: by default data.test_fraction of train is the test split,
    and the log says so; data.test_fraction=0 tests on val (one warning)."""
    root = class_tree(tmp_path / "imgs", splits=("train", "val"), per_class=10)
    extra = [] if test_fraction is None else [f"data.test_fraction={test_fraction}"]
    cfg = data_cfg(compose_cfg, "data=imagefolder", f"data.root={root}", f"data.cache_dir={tmp_path / 'c'}",
                   "normalization=none", *extra)
    with caplog.at_level(logging.INFO):
        data = build_from(cfg)
    sizes = [sum(len(b[1]) for b in loader) for loader in (data.train, data.val, data.test)]
    messages = [r.getMessage() for r in caplog.records]
    if test_fraction is None:
        assert sizes == [26, 30, 4]  # 15% of train's 30 (4.5, to even), stratified; val/ as is
        assert ("no test split of its own: 4 training images (data.test_fraction=0.15) are the test split; "
                "data.test_fraction=0 tests on the val split instead") in messages
    else:
        assert sizes == [30, 30, 30] and torch.equal(all_batches(data.test)[1], all_batches(data.val)[1])
        assert [m for m in messages if "data.test_fraction=0" in m] == [
            "no test split of its own and data.test_fraction=0: the test/ metrics are the val split's (30 "
            "images), the split that also picks the best epoch"]


def test_imagefolder_one_tree_split_by_ratios(compose_cfg, tmp_path):
    root = tmp_path / "imgs"
    for label, name in enumerate(CLASSES):
        for i in range(20):
            write_image(root / name / f"{i}.jpg", label)
    cfg = data_cfg(compose_cfg, "data=imagefolder", f"data.root={root}", f"data.cache_dir={tmp_path / 'c'}")
    data = build_from(cfg)
    sizes = [sum(len(b[1]) for b in part) for part in (data.train, data.val, data.test)]
    assert sizes == [42, 9, 9]


def test_catsdogs_flat_folder_skips_empty_and_corrupt_files(compose_cfg, tmp_path, caplog):
    root = tmp_path / "kaggle"
    for i in range(12):
        write_image(root / f"cat.{i}.jpg", 0)
        write_image(root / f"dog.{i}.jpg", 1)
    (root / "cat.100.jpg").write_bytes(b"")  # empty, as some of the real download
    (root / "dog.100.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")  # corrupt
    cfg = data_cfg(compose_cfg, "data=catsdogs", f"data.root={root}", "data.image_size=16",
                   f"data.cache_dir={tmp_path / 'c'}", "data.num_workers=0")
    with caplog.at_level(logging.WARNING):
        data = build_from(cfg)
    assert data.info.class_names == ["cat", "dog"]
    assert "skipped 1 empty image files" in caplog.text
    assert "skipped 1 unreadable image files" in caplog.text
    total = sum(len(b[1]) for part in (data.train, data.val, data.test) for b in part)
    assert total == 24


def test_images_past_the_cache_limit_stream_from_files_and_skip_corrupt_mid_epoch(compose_cfg, tmp_path, caplog):
    root = class_tree(tmp_path / "big", splits=("train",), per_class=8, size=80)
    (root / "train" / "ant" / "bad.png").write_bytes(b"\x89PNG broken")
    cfg = data_cfg(compose_cfg, "data=imagefolder", f"data.root={root}", "batch=4", "data.num_workers=0",
                   "normalization=rescale", "data.cache_max_gb=0.0001", f"data.cache_dir={tmp_path / 'c'}")
    with caplog.at_level(logging.INFO):
        data = build_from(cfg)
    assert isinstance(data.train, StreamLoader) and data.info.height == 80
    assert "over data.cache_max_gb=0.0001: streaming 25 files from disk" in caplog.text
    assert not (tmp_path / "c").exists()
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        n = sum(len(y) for _, y in data.train) + sum(len(y) for _, y in data.val) + sum(len(y) for _, y in data.test)
    assert n == 24  # 25 files, the broken one skipped
    assert "unreadable" in caplog.text
    x, _ = next(iter(data.test))
    assert x.shape[1:] == (3, 80, 80) and 0.0 <= x.min() and x.max() <= 1.0


def test_imagenet_subset_takes_first_classes_and_uses_val_as_test(compose_cfg, tmp_path):
    root = tmp_path / "imagenet"
    wnids = ["n01", "n02", "n03", "n04"]
    for label, w in enumerate(wnids):
        for i in range(10):
            write_image(root / "train" / w / f"{w}_{i}.JPEG", label % 3)
        for i in range(4):
            write_image(root / "val" / w / f"v{i}.JPEG", label % 3)
    cfg = data_cfg(compose_cfg, "data=imagenet_subset", f"data.root={root}", "data.num_classes=3",
                   "data.image_size=16", f"data.cache_dir={tmp_path / 'c'}", "data.val_fraction=0.2")
    data = build_from(cfg)
    assert data.info.class_names == wnids[:3]
    assert sum(len(b[1]) for b in data.test) == 12
    cfg2 = data_cfg(compose_cfg, "data=imagenet_subset", f"data.root={root}", "data.classes=[n04,n02]",
                    "data.image_size=16", f"data.cache_dir={tmp_path / 'c'}")
    assert build_from(cfg2).info.class_names == ["n04", "n02"]


@pytest.mark.parametrize("name", ["imagefolder", "catsdogs", "imagenet_subset", "cifar10", "mnist"])
def test_missing_root_is_one_clear_error(compose_cfg, tmp_path, name):
    cfg = data_cfg(compose_cfg, f"data={name}", f"data.root={tmp_path / 'nowhere'}")
    with pytest.raises(ConfigError, match="data.root") as err:
        build_from(cfg)
    assert "\n" not in str(err.value) and str(tmp_path / "nowhere") in str(err.value)


def test_decoded_images_are_cached(compose_cfg, tmp_path, monkeypatch):
    root = class_tree(tmp_path / "imgs")
    args = ("data=imagefolder", f"data.root={root}", f"data.cache_dir={tmp_path / 'cache'}")
    first = all_batches(build_from(data_cfg(compose_cfg, *args)).test)
    assert len(list((tmp_path / "cache").glob("*.u8"))) == 3  # train, val and test

    def no_decoding(*a, **k):
        raise AssertionError("decoded again")

    monkeypatch.setattr(imgexp.data.decode, "read_image", no_decoding)
    second = all_batches(build_from(data_cfg(compose_cfg, *args)).test)
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])


def test_subset_is_stratified_and_shrinks_val_and_test(compose_cfg):
    cfg = data_cfg(compose_cfg, "data=digits", "data.subset=300")
    data = build_from(cfg)
    _, y = all_batches(data.train)
    counts = Counter(y.tolist())
    assert len(y) == 300 and max(counts.values()) - min(counts.values()) <= 2
    assert sum(len(b[1]) for b in data.val) == round(270 * 300 / 1257)


def test_channels_and_size_conversion(compose_cfg):
    cfg = data_cfg(compose_cfg, "data=digits", "data.channels=3", "data.image_size=32")
    data = build_from(cfg)
    x, _ = next(iter(data.train))
    assert x.shape[1:] == (3, 32, 32) and data.info.channels == 3
    assert torch.equal(x[:, 0], x[:, 1])


def test_synthetic_square_marks_the_class(compose_cfg):
    data = build_from(data_cfg(compose_cfg, "data=synthetic", "normalization=none"))
    x, y = all_batches(data.test)
    assert data.info.num_classes == 4 and x.shape[1:] == (3, 32, 32)
    assert (x == 255).any() and isinstance(data.test, TensorLoader)


def test_torchvision_arrays_become_nchw_uint8():
    class Fake:
        data = np.zeros((5, 28, 28), dtype=np.uint8)
        targets = [0, 1, 2, 3, 4]

    images = as_images(Fake())
    assert images.x.shape == (5, 1, 28, 28) and images.y.tolist() == [0, 1, 2, 3, 4]
    Fake.data = np.zeros((2, 32, 32, 3), dtype=np.uint8)
    Fake.targets = [1, 0]
    assert as_images(Fake()).x.shape == (2, 3, 32, 32)


@pytest.mark.slow  # reads real files: seconds
@pytest.mark.skipif(not SHARED_CIFAR.is_dir(), reason=f"needs the CIFAR-10 image folder {SHARED_CIFAR} (shared/datasets/cifar10 beside the repository)")
def test_shared_cifar10_folder_slice(compose_cfg, tmp_path):
    source = folders.class_tree(SHARED_CIFAR)
    assert source.class_names[:3] == ["airplane", "automobile", "bird"] and len(source.train.paths) == 50_000
    assert all(Path(p).parent.name == source.class_names[int(label)]
               for p, label in zip(source.train.paths[::997], source.train.y[::997]))
    cfg = data_cfg(compose_cfg, "data=cifar10", f"data.root={SHARED_CIFAR}", "data.subset=200",
                   f"data.cache_dir={tmp_path}", "normalization=none")
    data = build_from(cfg)
    x, y = all_batches(data.train)
    assert x.shape == (200, 3, 32, 32) and Counter(y.tolist()) == {k: 20 for k in range(10)}
    assert sum(len(b[1]) for b in data.test) == round(10_000 * 200 / 45_000)  # val took 10% of train
    assert 40 < x.mean() < 200
