"""Shared fixtures: Hydra composition of the real config tree, and an isolated working directory."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_module

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
