"""Image folders on disk: ``root/<split>/<class>/*``, ``root/<class>/*``, the Kaggle cats-vs-dogs flat
folder (``cat.1.jpg``, ``dog.2.jpg``) and ImageNet-style class subsets. Empty files are left out here;
files that fail to decode are skipped (and counted) when decoded."""
from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Optional, Sequence

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
    """Image files directly in ``folder``, sorted; empty files and broken links left out (and counted)."""
    with os.scandir(folder) as entries:
        files = [e for e in entries if os.path.splitext(e.name)[1].lower() in IMAGE_SUFFIXES]
    readable = sorted(Path(e.path) for e in files if nonempty_file(e))
    if len(readable) < len(files):
        log.warning("skipped %d empty image files or broken links in %s", len(files) - len(readable), folder)
    return readable


def class_dirs(folder: Path) -> list[str]:
    """Class folders of ``folder``: real directories holding image files. Links to directories and folders
    without images are left out, with one warning naming them, so they never become extra classes."""
    names, links, empty = [], [], []
    for p in sorted(folder.iterdir()):
        if p.name.startswith(".") or not p.is_dir():
            continue
        if p.is_symlink():
            links.append(p.name)
        elif not image_files(p):
            empty.append(p.name)
        else:
            names.append(p.name)
    for kind, left in (("links to directories", links), ("folders without images", empty)):
        if left:
            log.warning("left out of the classes in %s, %s: %s", folder, kind, ", ".join(left))
    return names


def list_classes(folder: Path, classes: Sequence[str], named: bool = False) -> Files:
    """Files of ``folder/<class>/`` for each class, labelled by the class's position in ``classes``;
    ``named``: the user chose the classes, and one without images is an error."""
    paths, labels = [], []
    for label, name in enumerate(classes):
        found = image_files(folder / name) if (folder / name).is_dir() else []
        if named and not found:
            raise ConfigError("data.classes", f"{name}: no images in {folder / name}")
        paths += [str(p) for p in found]
        labels += [label] * len(found)
    if not paths:
        raise ConfigError("data.root", f"no images in {folder}/<class>/ for classes {', '.join(classes[:5])}...")
    return Files(paths, torch.tensor(labels, dtype=torch.long))


def split_dirs(root: Path) -> dict[str, Path]:
    """The split folders present under ``root`` (train, and val/valid/validation, test)."""
    return {split: root / name for split, names in SPLIT_NAMES.items() for name in names if (root / name).is_dir()}


def class_tree(root: Path, classes: Optional[Sequence[str]] = None) -> Source:
    """``root/<split>/<class>/*`` when ``root/train`` exists, else one tree ``root/<class>/*``."""
    splits = split_dirs(root)
    base = splits.get("train", root)
    names = list(classes) if classes else class_dirs(base)
    if not names:
        raise ConfigError("data.root", f"no class folders in {base} (expected {base}/<class>/<image>)")
    if "train" not in splits:
        return Source(list_classes(root, names), names)
    parts = {split: list_classes(folder, names) for split, folder in splits.items()}
    return Source(parts["train"], names, test=parts.get("test"), val=parts.get("val"))


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
    if not (root / "train").is_dir():
        raise ConfigError("data.root", f"{root} has no train/ folder (expected train/<wnid>/ and val/<wnid>/)")
    names = list(cfg.classes) if cfg.classes else class_dirs(root / "train")[: cfg.num_classes]
    missing = [n for n in names if not (root / "train" / n).is_dir()]
    if missing:
        raise ConfigError("data.classes", f"not in {root / 'train'}: {', '.join(missing)}")
    held_out = root / "val" if (root / "val").is_dir() else None
    return Source(list_classes(root / "train", names, named=bool(cfg.classes)), names,
                  test=list_classes(held_out, names) if held_out else None)
