"""Shared fixtures: Hydra composition of the real config tree, and an isolated working directory."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_module
from PIL import Image

import imgexp.conf
from imgexp.config import register

register()
CONF = Path(imgexp.conf.__file__).parent


def config_options() -> list[tuple[str, str]]:
    """Every (group, option) pair found in conf/: tests discover options, they never list them."""
    return sorted((p.parent.name, p.stem) for p in CONF.glob("*/*.yaml"))


@pytest.fixture
def compose_cfg():
    """compose_cfg(*overrides) -> the DictConfig ``python -m imgexp <overrides>`` would run."""

    def _compose(*overrides: str):
        with initialize_config_module(config_module="imgexp.conf", version_base=None):
            return compose(config_name="config", overrides=list(overrides))

    return _compose


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """Run in an empty directory, with MLflow's default store (./mlflow.db) inside it."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return tmp_path


def run_cli(*args: str, cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    """``python -m imgexp args...`` in ``cwd``; progress bars off, output captured."""
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "HYDRA_FULL_ERROR")}
    return subprocess.run(
        [sys.executable, "-m", "imgexp", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


CLASSES = ["ant", "bee", "cow"]


def write_image(path: Path, label: int, size: int = 16, mode: str = "RGB") -> None:
    """A flat image whose colour encodes the label, so labels can be read back from pixels."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, (size, size), (80 * label + 20,) * (1 if mode == "L" else 3)).save(path)


def class_tree(root: Path, splits=("train", "test"), per_class=10, size=16) -> Path:
    """root/<split>/<class>/<i>.png for CLASSES."""
    for split in splits:
        for label, name in enumerate(CLASSES):
            for i in range(per_class):
                write_image(root / split / name / f"{i}.png", label, size)
    return root


@pytest.fixture(scope="session")
def image_tree(tmp_path_factory) -> Path:
    """A small generated image folder (train/ and test/, 3 classes) that every folder source can read."""
    return class_tree(tmp_path_factory.mktemp("image_tree"))
