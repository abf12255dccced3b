"""Shared fixtures: Hydra composition of the real config tree, and an isolated working directory."""
from __future__ import annotations

import contextlib
import io
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_module
from PIL import Image

import imgexp.conf
from imgexp.help import NOT_GROUPS, PRESETS  # conf/'s folders that are not config groups, and presets
from imgexp.register import register

register()
CONF = Path(imgexp.conf.__file__).parent


def config_options() -> list[tuple[str, str]]:
    """Every (group, option) pair found in conf/: tests discover options, they never list them."""
    return sorted((p.parent.name, p.stem) for p in CONF.glob("*/*.yaml")
                  if p.parent.name not in NOT_GROUPS + PRESETS)


@pytest.fixture(scope="session", autouse=True)
def decode_cache_home(tmp_path_factory):
    """The decode cache's default folder (under $XDG_CACHE_HOME) in a temp dir, not the user's home."""
    with pytest.MonkeyPatch.context() as env:
        env.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("xdg-cache")))
        yield


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


def run_cli(*args: str, cwd: Path, timeout: int = 300, process: bool = False) -> subprocess.CompletedProcess:
    """``python -m imgexp args...`` in ``cwd``, output captured. In this process (``imgexp.__main__.main()``
    with this argv, cwd and environment, as the console script runs it) unless ``process``: a new
    interpreter spends seconds importing torch, MLflow and scikit-learn before it reads its arguments.
    Tests of what only a process shows (signals, exit codes of ``python -m``, concurrency) use processes;
    ``timeout`` applies to them."""
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "HYDRA_FULL_ERROR")}
    if process:
        return subprocess.run([sys.executable, "-m", "imgexp", *args], cwd=cwd, env=env, capture_output=True,
                              text=True, timeout=timeout)
    from imgexp.__main__ import main

    out, err = io.StringIO(), io.StringIO()
    with process_state(), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        os.environ.clear()
        os.environ.update(env)
        os.chdir(cwd)
        sys.argv = ["imgexp", *args]
        try:
            main()
            code = 0
        except SystemExit as exit_:  # as the interpreter ends: sys.exit("text") prints it and exits 1
            code = exit_.code if isinstance(exit_.code, int) else int(exit_.code is not None)
            if isinstance(exit_.code, str):
                print(exit_.code, file=sys.stderr)
    return subprocess.CompletedProcess(["imgexp", *args], code, out.getvalue(), err.getvalue())


@contextlib.contextmanager
def process_state():
    """Give back what a CLI run changes in the process: environment, argv, cwd, signal handlers, logging
    (Hydra configures it for each run), Hydra's global state."""
    from hydra.core.global_hydra import GlobalHydra

    environ, argv, cwd = dict(os.environ), sys.argv[:], os.getcwd()
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    loggers = [logging.getLogger(), *(v for v in logging.Logger.manager.loggerDict.values()
                                      if isinstance(v, logging.Logger))]
    saved = [(lg, lg.handlers[:], lg.filters[:], lg.level, lg.propagate, lg.disabled) for lg in loggers]
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(environ)
        sys.argv[:] = argv
        os.chdir(cwd)
        for s, handler in handlers.items():
            signal.signal(s, handler)
        for lg, hs, fs, level, propagate, disabled in saved:
            lg.handlers[:], lg.filters[:], lg.level, lg.propagate, lg.disabled = hs, fs, level, propagate, disabled
        GlobalHydra.instance().clear()


# Over 50M parameters, mostly dense layers no image size shrinks: seconds to build and step on 2 cores.
HEAVY_MODELS = {"alexnet", "resnet152", "vgg11", "vgg11_bn", "vgg16", "vgg16_bn", "vgg19", "vgg19_bn"}
# The models the quick tier (-m "not slow") does not build: the heavy ones and those near a second a build.
SLOW_MODELS = HEAVY_MODELS | {"resnet50", "resnet101", "resnext50_32x4d", "efficientnet_b2", "efficientnet_b3"}

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
