"""``python -m imgexp.predict model=<run id | runs:/<id>/model | models:/<name>/<version>> images=<files, folders
or globs>``: classify new images with a run's logged model; writes ``predictions.csv`` (path, class,
probability, top-k) into ``output_dir``, prints a short table, lists the files it could not read, and with
``cam=true`` draws a Grad-CAM overlay per image into ``output_dir/cam/``. Configured by conf/predict.yaml."""
from __future__ import annotations

import glob
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import hydra
from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from imgexp import redact
from imgexp.config import ConfigError, as_list, require
from imgexp.help import stage_help
from imgexp.errors import one_line_exit, run_app

log = logging.getLogger(__name__)
SHOWN = 20  # rows of the printed table


@dataclass
class PredictConfig:
    model: str = MISSING  # a run id, runs:/<run id>/model, models:/<name>/<version>, or a model folder
    images: Any = MISSING  # a file, folder (searched recursively) or glob, or a list of them
    tracking_uri: Optional[str] = None  # None: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db here
    topk: int = 3
    batch: int = 64
    device: str = "auto"
    num_workers: int = 4  # threads decoding the files
    cam: bool = False  # a Grad-CAM overlay per image, at the model's last conv layer
    output_dir: str = MISSING

    def __post_init__(self) -> None:
        require(self.topk >= 1, "topk", "must be >= 1")
        require(self.batch >= 1, "batch", "must be >= 1")
        require(self.num_workers >= 1, "num_workers", "must be >= 1")


ConfigStore.instance().store(name="predict_schema", node=PredictConfig)


def image_paths(images: Any) -> list[str]:
    """The files ``images`` names: files as given, folders' image files (recursively, sorted), globs' matches."""
    from imgexp.data.folders import IMAGE_SUFFIXES

    paths: list[str] = []
    for entry in as_list(images):
        entry = os.path.expanduser(str(entry))
        if os.path.isdir(entry):
            found = (os.path.join(d, f) for d, _, files in os.walk(entry) for f in files if not f.startswith("."))
            paths += sorted(p for p in found if os.path.splitext(p)[1].lower() in IMAGE_SUFFIXES)
        elif glob.has_magic(entry):
            paths += sorted(p for p in glob.glob(entry, recursive=True) if os.path.isfile(p))
        else:
            paths.append(entry)
    if not paths:
        raise ConfigError("images", f"no image files in {images}")
    return paths


def top_k(probs, class_names: list[str], k: int) -> list[str]:
    values, indices = probs.topk(min(k, probs.shape[1]), 1)
    return ["; ".join(f"{class_names[i]} {v:.4f}" for v, i in zip(vs, ix))
            for vs, ix in zip(values.tolist(), indices.tolist())]


def predict(cfg: PredictConfig, output_dir: str | Path) -> str:
    """Classify ``cfg.images`` with ``cfg.model``; returns the printed summary."""
    import pandas as pd
    import torch

    from imgexp.data.decode import read_image
    from imgexp.runtime import resolve_device
    from imgexp.tracking.logged_model import load_classifier

    classifier = load_classifier(cfg.model, cfg.tracking_uri, str(resolve_device(cfg.device)))
    spec, paths = classifier.spec, image_paths(cfg.images)
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    rows, unreadable = [], []
    with ThreadPoolExecutor(cfg.num_workers) as pool:
        for start in range(0, len(paths), cfg.batch):
            batch = paths[start:start + cfg.batch]
            decoded = list(pool.map(lambda p: read_image(p, spec.stored, spec.channels)[0], batch))
            unreadable += [p for p, x in zip(batch, decoded) if x is None]
            kept = [(p, x) for p, x in zip(batch, decoded) if x is not None]
            if not kept:
                continue
            x = classifier.stack([x for _, x in kept])
            probs = classifier.probabilities(x, cfg.batch)
            best = probs.max(1)
            rows += [{"path": p, "class": spec.class_names[i], "probability": v, f"top{cfg.topk}": t}
                     for (p, _), i, v, t in zip(kept, best.indices.tolist(), best.values.tolist(),
                                                top_k(probs, spec.class_names, cfg.topk))]
            if cfg.cam:
                draw_cams(classifier, x, [p for p, _ in kept], probs, output_dir / "cam", start)
    table = pd.DataFrame(rows, columns=["path", "class", "probability", f"top{cfg.topk}"])
    table = pd.concat([table, pd.DataFrame({"path": unreadable, "error": "unreadable"})], ignore_index=True)
    csv = output_dir / "predictions.csv"
    table.to_csv(csv, index=False)
    if not rows:
        raise ConfigError("images", f"none of the {len(paths)} files could be read as an image: "
                                    + ", ".join(unreadable[:5]) + (" ..." if len(unreadable) > 5 else ""))
    lines = [table.head(SHOWN).to_string(index=False, na_rep="")]
    if len(table) > SHOWN:
        lines.append(f"... {len(table) - SHOWN} more")
    if unreadable:
        lines.append(f"{len(unreadable)} unreadable files: " + ", ".join(unreadable[:10])
                     + (" ..." if len(unreadable) > 10 else ""))
    lines.append(f"{len(rows)} images classified by {cfg.model} ({torch.device(classifier.device)}); "
                 f"predictions in {csv}" + (f", Grad-CAM overlays in {output_dir / 'cam'}" if cfg.cam else ""))
    return "\n".join(lines)


def draw_cams(classifier, x, paths: list[str], probs, folder: Path, start: int) -> None:
    """One PNG per image: the image and the Grad-CAM of its predicted class at the last conv layer."""
    from imgexp.analysis.cam import cam_grid_figure, default_cam_layer, grad_cam
    from imgexp.analysis.pyplot import plt

    folder.mkdir(parents=True, exist_ok=True)
    maps = grad_cam(classifier.model, default_cam_layer(classifier.model), x)
    images = x * classifier.std + classifier.mean
    best = probs.max(1)
    for n, (path, image, heat) in enumerate(zip(paths, images, maps)):
        name = classifier.class_names[best.indices[n]]
        fig = cam_grid_figure([image.cpu() / 255], [heat], [f"{name} {best.values[n]:.2f}"], ncols=1)
        fig.savefig(folder / f"{start + n:05d}_{Path(path).stem}.png")
        plt.close(fig)


@hydra.main(version_base=None, config_path="pkg://imgexp.conf.predict", config_name="predict")
def app(cfg: DictConfig) -> None:
    hc = redact.install_for_job()
    with one_line_exit():
        print(predict(OmegaConf.to_object(cfg), hc.runtime.output_dir))


def main() -> None:
    if stage_help("predict/predict.yaml"):
        return
    run_app(app)


if __name__ == "__main__":
    main()
