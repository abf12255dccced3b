"""Image folders on disk: ``root/<split>/<class>/*``, ``root/<class>/*``, the Kaggle cats-vs-dogs flat
folder (``cat.1.jpg``, ``dog.2.jpg``) and ImageNet-style class subsets. Empty files are left out here;
files that fail to decode are skipped (and counted) when decoded."""
from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Sequence

import torch

from imgexp.config import ConfigError
from imgexp.data.sources import Files, Source, register_source

log = logging.getLogger(__name__)
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}
SPLIT_NAMES = {"train": ("train",), "val": ("val", "valid", "validation"), "test": ("test",)}


def require_root(cfg) -> Path:
    if cfg.root is None:
        raise ConfigError("data.root", f"data={cfg.name} needs data.root=<folder>")
    root = Path(cfg.root).expanduser()
    if not root.is_dir():
        raise ConfigError("data.root", f"{root} is not a folder")
    return root


def nonempty_file(entry: os.DirEntry) -> bool:
    """A regular file (or a link to one) with content; False for links that loop or lead nowhere."""
    try:
        return entry.is_file() and entry.stat().st_size > 0
    except OSError:
        return False


def image_files(folder: Path) -> list[Path]:
    """Image files directly in ``folder``, sorted; hidden files (``.name``, such as the ``._name.jpg``
    files macOS leaves beside each image) left out, and empty files and broken links (counted)."""
    with os.scandir(folder) as entries:
        files = [e for e in entries
                 if not e.name.startswith(".") and os.path.splitext(e.name)[1].lower() in IMAGE_SUFFIXES]
    readable = sorted(Path(e.path) for e in files if nonempty_file(e))
    if len(readable) < len(files):
        log.warning("skipped %d empty image files or broken links in %s", len(files) - len(readable), folder)
    return readable


def class_files(folder: Path) -> dict[str, list[Path]]:
    """Class folders of ``folder`` (real directories holding image files) and their files, each listed
    once. Links to directories and folders without images are left out, with one warning naming them, so
    they never become extra classes."""
    found, links, empty = {}, [], []
    for p in sorted(folder.iterdir()):
        if p.name.startswith(".") or not p.is_dir():
            continue
        if p.is_symlink():
            links.append(p.name)
        elif files := image_files(p):
            found[p.name] = files
        else:
            empty.append(p.name)
    for kind, left in (("links to directories", links), ("folders without images", empty)):
        if left:
            log.warning("left out of the classes in %s, %s: %s", folder, kind, ", ".join(left))
    return found


def named_class_files(folder: Path, classes: Sequence[str], named: bool = False) -> dict[str, list[Path]]:
    """The image files of ``folder/<class>/`` for each of ``classes`` that has a folder there; ``named``:
    the user chose the classes, and one without images is an error."""
    found = {name: image_files(folder / name) for name in classes if (folder / name).is_dir()}
    empty = [name for name in classes if not found.get(name)]
    if named and empty:
        raise ConfigError("data.classes", f"{empty[0]}: no images in {folder / empty[0]}")
    return found


def labelled(found: dict[str, list[Path]], classes: Sequence[str], folder: Path) -> Files:
    """The files of ``classes`` in ``found``, each labelled by its class's position in ``classes``."""
    paths = [str(p) for name in classes for p in found.get(name, [])]
    if not paths:
        raise ConfigError("data.root", f"no images in {folder}/<class>/ for classes {', '.join(classes[:5])}...")
    labels = [label for label, name in enumerate(classes) for _ in found.get(name, [])]
    return Files(paths, torch.tensor(labels, dtype=torch.long))


def split_dirs(root: Path) -> dict[str, Path]:
    """The split folders present under ``root`` (train, and val/valid/validation, test)."""
    return {split: root / name for split, names in SPLIT_NAMES.items() for name in names if (root / name).is_dir()}


def differing_classes(found: dict[Path, dict[str, list[Path]]], classes: Sequence[str], train: Path) -> None:
    """One warning when a held-out split folder (val/, test/) lacks some of the training ``classes`` (its
    metrics cover the others) or has classes train/ lacks: those are left out with their images, as a
    model cannot predict a class it never trained on."""
    said = []
    for folder, held_out in found.items():
        lacks = [name for name in classes if not held_out.get(name)]
        extra = {name: len(files) for name, files in held_out.items() if name not in classes}
        if lacks:
            said.append(f"{folder.name}/ has no images of {', '.join(lacks)}")
        if extra:
            counts = ", ".join(f"{name} ({n} images)" for name, n in extra.items())
            said.append(f"{folder.name}/ has {counts}, not in {train.name}/: left out, as a model cannot "
                        f"predict a class it never trained on")
    if said:
        log.warning("the split folders of %s hold different classes: %s", train.parent, "; ".join(said))


def class_tree(root: Path) -> Source:
    """``root/<split>/<class>/*`` when ``root/train`` exists, else one tree ``root/<class>/*``."""
    splits = split_dirs(root)
    if "train" not in splits:  # one tree, split by ratios: each folder a class
        splits = {"train": root}
    base = splits.pop("train")
    found = class_files(base)
    if not found:
        raise ConfigError("data.root", f"no class folders in {base} (expected {base}/<class>/<image>)")
    names = list(found)
    held_out = {folder: class_files(folder) for folder in splits.values()}
    differing_classes(held_out, names, base)
    parts = {split: labelled(held_out[folder], names, folder) for split, folder in splits.items()}
    return Source(labelled(found, names, base), names, test=parts.get("test"), val=parts.get("val"))


@register_source("imagefolder")
def imagefolder(cfg) -> Source:
    return class_tree(require_root(cfg))


CATSDOGS_NAME = re.compile(r"^(cat|dog)\.\d+\.", re.IGNORECASE)


@register_source("catsdogs")
def catsdogs(cfg) -> Source:
    """The Kaggle download as it comes (one flat folder, label from the file name), or class folders."""
    root = require_root(cfg)
    flat = [p for p in image_files(root) if CATSDOGS_NAME.match(p.name)]
    if not flat:
        return class_tree(root)
    labels = [0 if p.name.lower().startswith("cat") else 1 for p in flat]
    return Source(Files([str(p) for p in flat], torch.tensor(labels, dtype=torch.long)), ["cat", "dog"])


@register_source("imagenet_subset")
def imagenet_subset(cfg) -> Source:
    """``root/train/<wnid>/`` and ``root/val/<wnid>/`` cut to ``classes`` or the first ``num_classes``;
    ImageNet's val split serves as the test split, and val is carved out of train."""
    root = require_root(cfg)
    train = root / "train"
    if not train.is_dir():
        raise ConfigError("data.root", f"{root} has no train/ folder (expected train/<wnid>/ and val/<wnid>/)")
    missing = [n for n in cfg.classes or () if not (train / n).is_dir()]
    if missing:
        raise ConfigError("data.classes", f"not in {train}: {', '.join(missing)}")
    found = named_class_files(train, cfg.classes, named=True) if cfg.classes else class_files(train)
    names = list(cfg.classes) if cfg.classes else list(found)[: cfg.num_classes]
    held_out = root / "val"
    if not held_out.is_dir():
        return Source(labelled(found, names, train), names)
    val = named_class_files(held_out, names)
    differing_classes({held_out: val}, names, train)
    return Source(labelled(found, names, train), names, test=labelled(val, names, held_out))
