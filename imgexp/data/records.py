"""What a run's splits are, for the tracking store: a name, where the images come from, a digest of the
file list (paths and labels) or of the decoded array, the number of images and the classes. Two runs on
different folders, subsets or splits get different digests."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from imgexp.data.sources import Files, Samples


@dataclass
class SplitRecord:
    name: str  # the data set: data.name, or the folder's name
    split: str  # train | val | test
    source: str  # a folder's absolute path, or "imgexp:<data.name>" for a built-in set
    digest: str  # 16 hex digits
    images: int
    class_names: list[str]


def digest(samples: Samples) -> str:
    h = hashlib.sha256()
    if isinstance(samples, Files):
        for path, label in zip(samples.paths, samples.y.tolist()):
            h.update(f"{path}\t{label}\n".encode())
    else:
        h.update(samples.x.contiguous().numpy().tobytes())
        h.update(samples.y.contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def split_records(parts: tuple[Samples, ...], data_cfg, class_names: list[str]) -> list[SplitRecord]:
    """One record per split (train, val, test) of ``data_cfg``'s data."""
    root = Path(data_cfg.root).expanduser().resolve() if data_cfg.get("root") else None
    name = data_cfg.name if root is None or data_cfg.name != "imagefolder" else root.name
    source = str(root) if root is not None else f"imgexp:{data_cfg.name}"
    return [SplitRecord(name, split, source, digest(p), len(p.y), list(class_names))
            for split, p in zip(("train", "val", "test"), parts)]
