"""Odd data a real folder holds: high-bit-depth, alpha, CMYK and palette images, hidden files, splits with
different classes, a single class, a damaged decode cache; and warnings said once."""
from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import imgexp.data.decode
from imgexp.config import ConfigError
from imgexp.data import build
from imgexp.data.decode import read_image
from imgexp.data.folders import image_files
from imgexp.train.metrics import classification_metrics, confusion_counts, per_class_table

from conftest import CLASSES, class_tree, run_cli, write_image


def build_data(compose_cfg, root: Path, tmp_path: Path, *overrides: str):
    cfg = compose_cfg("data=imagefolder", f"data.root={root}", f"data.cache_dir={tmp_path / 'cache'}",
                      "data.num_workers=0", "device=cpu", "normalization=none", *overrides)
    return build(cfg.data, cfg.augmentation, cfg.normalization, cfg.batch, cfg.seed, torch.device("cpu"))


def all_batches(loader):
    xs, ys = zip(*loader)
    return torch.cat(xs), torch.cat(ys)


def warnings_with(caplog, text: str) -> int:
    return sum(text in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)


# ------------------------------------------------------------------ image modes
GRADIENT = np.tile(np.linspace(0, 255, 32).round().astype(np.uint8), (32, 1))


@pytest.mark.parametrize("mode, name, pixels", [
    ("I;16", "g16.png", GRADIENT.astype(np.uint16) * 257),  # a 16-bit PNG
    ("I", "g32.tif", GRADIENT.astype(np.int32) * 257),  # 16-bit values in a 32-bit image
    ("F", "gf.tif", GRADIENT.astype(np.float32) / 255),  # floats in 0..1
])
def test_high_bit_depth_images_match_their_8_bit_version(tmp_path, mode, name, pixels):
    Image.fromarray(GRADIENT).save(tmp_path / "g8.png")
    Image.fromarray(pixels).save(tmp_path / name)
    assert Image.open(tmp_path / name).mode == mode
    eight, _ = read_image(str(tmp_path / "g8.png"), (32, 32), 1)
    deep, converted = read_image(str(tmp_path / name), (32, 32), 1)
    assert converted and eight.float().mean() == pytest.approx(127.5, abs=0.5)
    assert abs(deep.float().mean() - eight.float().mean()) <= 1  # not saturated to white (253 before)
    assert (deep.int() - eight.int()).abs().max() <= 1
    rgb, _ = read_image(str(tmp_path / name), (32, 32), 3)
    assert torch.equal(rgb, deep.expand(3, -1, -1))


def odd_mode_images(folder: Path) -> None:
    """Red in four modes that a 3-channel data set converts: RGBA, CMYK, palette, palette with transparency."""
    Image.new("RGBA", (16, 16), (255, 0, 0, 128)).save(folder / "rgba.png")
    Image.new("CMYK", (16, 16), (0, 255, 255, 0)).save(folder / "cmyk.jpg")
    palette = Image.new("P", (16, 16), 1)
    palette.putpalette([0, 0, 255] + [255, 0, 0] * 255)
    palette.save(folder / "p.png")
    palette.save(folder / "p_transparent.png", transparency=0)


def test_alpha_cmyk_and_palette_images_are_converted_and_counted(compose_cfg, tmp_path, caplog):
    root = tmp_path / "tree"
    for label, name in enumerate(CLASSES):
        for i in range(8):
            write_image(root / name / f"{i}.png", label)
    odd_mode_images(root / "ant")
    for f in ("rgba.png", "cmyk.jpg", "p.png", "p_transparent.png"):
        x, converted = read_image(str(root / "ant" / f), (16, 16), 3)
        assert converted, f
        assert (x[:, 8, 8].int() - torch.tensor([255, 0, 0])).abs().max() <= 2, f
        grey, _ = read_image(str(root / "ant" / f), (16, 16), 1)
        assert abs(int(grey[0, 8, 8]) - 76) <= 2, f  # luma of pure red
    with caplog.at_level(logging.INFO):
        data = build_data(compose_cfg, root, tmp_path)
    assert data.info.channels == 3
    assert "converted 4 of 28 images to 3x16x16" in caplog.text


# ------------------------------------------------------------------ hidden files
def test_hidden_files_are_not_images(compose_cfg, tmp_path, caplog):
    root = class_tree(tmp_path / "tree", per_class=6)
    for split in ("train", "test"):
        for name in CLASSES:
            (root / split / name / f"._{name}.png").write_bytes(b"\x00\x05\x16\x07\x00\x02" + bytes(60))  # AppleDouble
            write_image(root / split / name / ".hidden.png", 2 - CLASSES.index(name))
    assert [p.name for p in image_files(root / "train" / "ant")] == [f"{i}.png" for i in range(6)]
    with caplog.at_level(logging.WARNING):
        data = build_data(compose_cfg, root, tmp_path, "data.val_fraction=0.3")
    assert "unreadable" not in caplog.text
    x, y = all_batches(data.test)
    assert len(y) == 18 and torch.equal(x[:, 0, 0, 0], (80 * y + 20).float())


# ------------------------------------------------------------------ splits with different classes
def test_class_without_test_images_is_left_out_of_f1_macro(compose_cfg, tmp_path, caplog):
    from sklearn.metrics import f1_score

    root = class_tree(tmp_path / "tree")
    for f in (root / "test" / "cow").iterdir():
        f.unlink()
    (root / "test" / "cow").rmdir()
    with caplog.at_level(logging.INFO):
        data = build_data(compose_cfg, root, tmp_path)
    assert data.info.class_names == CLASSES
    assert warnings_with(caplog, "cow") == 1
    assert "test/ has no images of cow" in caplog.text
    assert "test/f1_macro covers 2 of 3 classes (no test images: cow)" in caplog.text
    _, y = all_batches(data.test)
    assert sorted(set(y.tolist())) == [0, 1]
    logits = torch.randn(len(y), 3, generator=torch.Generator().manual_seed(0))
    logits[:4, 2] += 10  # some predicted as cow, a class with no test images
    pred = logits.argmax(1).numpy()
    m = classification_metrics(logits, y, "test")
    assert m["test/f1_macro"] == pytest.approx(f1_score(y.numpy(), pred, labels=[0, 1], average="macro"))
    table = per_class_table(confusion_counts(logits, y), CLASSES)
    assert table["support"].tolist() == [10, 10, 0]
    assert np.isnan(table["f1"][2]) and np.isnan(table["recall"][2]) and table["f1"][:2].notna().all()
    assert table["f1"].mean() == pytest.approx(m["test/f1_macro"])  # as pandas reads the CSV


def test_class_only_in_test_is_left_out_and_counted(compose_cfg, tmp_path, caplog):
    root = class_tree(tmp_path / "tree")
    for i in range(7):
        write_image(root / "test" / "deer" / f"{i}.png", 0)
    with caplog.at_level(logging.WARNING):
        data = build_data(compose_cfg, root, tmp_path)
    assert data.info.class_names == CLASSES
    assert warnings_with(caplog, "deer") == 1
    assert "test/ has deer (7 images), not in train/: left out" in caplog.text
    assert len(all_batches(data.test)[1]) == 30


# ------------------------------------------------------------------ a single class
def test_single_class_is_one_clear_error(compose_cfg, tmp_path):
    root = tmp_path / "tree"
    for i in range(10):
        write_image(root / "ant" / f"{i}.png", 0)
    with pytest.raises(ConfigError) as err:
        build_data(compose_cfg, root, tmp_path)
    assert err.value.key == "data"
    assert err.value.reason == f"a classifier needs at least two classes, {root} has one: ant"
    for i in range(3):
        (root / "bee" / f"{i}.png").parent.mkdir(exist_ok=True)
        (root / "bee" / f"{i}.png").write_bytes(b"broken")  # bee: no readable image, left out
    with pytest.raises(ConfigError, match="at least two classes, .* has one: ant"):
        build_data(compose_cfg, root, tmp_path)


def test_single_class_on_the_command_line(tmp_path):
    root = tmp_path / "tree"
    for i in range(10):
        write_image(root / "ant" / f"{i}.png", 0)
    r = run_cli("data=imagefolder", f"data.root={root}", f"data.cache_dir={tmp_path / 'cache'}", "epochs=1",
                "progress=false", "analysis=none", "tracking=none", "device=cpu", cwd=tmp_path)
    assert r.returncode == 1
    assert f"imgexp: error: data: a classifier needs at least two classes, {root} has one: ant" in r.stderr
    assert "epoch 1/1" not in r.stdout + r.stderr


# ------------------------------------------------------------------ warnings once
def test_folder_warnings_appear_once(compose_cfg, tmp_path, caplog):
    root = class_tree(tmp_path / "tree")
    (root / "train" / "deer").mkdir()
    os.symlink(root / "train" / "ant", root / "train" / "ant_again")
    os.symlink("nowhere.png", root / "train" / "cow" / "broken.png")
    with caplog.at_level(logging.WARNING):
        build_data(compose_cfg, root, tmp_path)
    assert warnings_with(caplog, "folders without images: deer") == 1
    assert warnings_with(caplog, "links to directories: ant_again") == 1
    assert warnings_with(caplog, "skipped 1 empty image files or broken links") == 1


# ------------------------------------------------------------------ the decode cache
def test_damaged_decode_cache_is_rebuilt(compose_cfg, tmp_path, caplog, monkeypatch):
    root = class_tree(tmp_path / "tree")
    first = all_batches(build_data(compose_cfg, root, tmp_path).test)
    caches = sorted((tmp_path / "cache").glob("*.u8"))
    assert len(caches) == 3
    caches[0].write_bytes(b"garbage" * 100)
    caches[1].write_bytes(caches[1].read_bytes()[:200])  # truncated
    caches[2].with_suffix(".json").write_text('{"shape": [3, 1')  # its description cut short
    with caplog.at_level(logging.WARNING):
        second = all_batches(build_data(compose_cfg, root, tmp_path).test)
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])
    for path in caches:
        assert warnings_with(caplog, f"decode cache {path} is damaged (") == 1
        assert "decoding again" in caplog.text

    def no_decoding(*a, **k):
        raise AssertionError("decoded again")

    monkeypatch.setattr(imgexp.data.decode, "read_image", no_decoding)  # the rebuilt files are read back
    third = all_batches(build_data(compose_cfg, root, tmp_path).test)
    assert torch.equal(first[0], third[0])
