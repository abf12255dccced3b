"""The wheel carries every package and the whole config tree, so a non-editable install runs anywhere."""
from __future__ import annotations

import subprocess
import sys
import tomllib
import zipfile

import pytest
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_pyproject_lists_every_package():
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    inits = [*(ROOT / "imgexp").rglob("__init__.py"), *(ROOT / "hydra_plugins").rglob("__init__.py")]
    found = {".".join(p.parent.relative_to(ROOT).parts) for p in inits}
    conf = {".".join(("imgexp", *p.parent.relative_to(ROOT).parts)) for p in (ROOT / "conf").rglob("__init__.py")}
    assert found | conf | {"imgexp.templates"} == listed
    assert not (ROOT / "hydra_plugins" / "__init__.py").exists(), "hydra_plugins is a namespace package"


@pytest.mark.slow
def test_wheel_contains_config_tree(tmp_path):
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp_path), str(ROOT)],
        check=True, capture_output=True, timeout=300,
    )
    (wheel,) = tmp_path.glob("imgexp-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    yamls = {f"imgexp/conf/{p.relative_to(ROOT / 'conf').as_posix()}" for p in (ROOT / "conf").rglob("*.yaml")}
    templates = {f"imgexp/templates/{p.relative_to(ROOT / 'multirun_templates').as_posix()}"
                 for p in (ROOT / "multirun_templates").rglob("*.yaml")}
    assert yamls and templates and yamls | templates <= names
    assert "hydra_plugins/imgexp_templates/templates_searchpath.py" in names
    assert "imgexp/__main__.py" in names
    assert {"hydra_plugins/imgexp_grid_sweeper/grid_sweeper.py",
            "hydra_plugins/imgexp_optuna_sweeper/optuna_sweeper.py"} <= names


@pytest.mark.slow
def test_templates_run_from_any_directory(tmp_path):
    """``imgexp -cn <template>`` finds the shipped templates outside the repository."""
    proc = subprocess.run([sys.executable, "-m", "imgexp", "-cn", "report_d_ablation", "report_d_ablation=c",
                           "data.root=/x", "--cfg", "job"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "experiment: report_d_ablation" in proc.stdout and "run_name: c_lr_decay" in proc.stdout


def test_help_lists_what_users_choose_and_loads_no_torch(tmp_path):
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "imgexp", "--help"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    groups = {line.split()[0]: line.split(None, 1)[1] for line in
              proc.stdout.split("Config groups (group=option):\n")[1].split("\n\n")[0].splitlines()}
    assert set(groups) == {p.name for p in (ROOT / "conf").iterdir() if p.is_dir() and p.name not in (
        "hydra", "predict", "__pycache__")} | {"hydra/launcher", "hydra/sweeper"}  # predict: not a group
    assert groups["model"].startswith("alexnet, efficientnet_b0") and groups["hydra/sweeper"] == "grid, optuna"
    assert "report_d_ablation" in proc.stdout and "resume: null" in proc.stdout
    assert "\n  trainer.nodes: int = 1  # machines one run spans" in proc.stdout
    assert "\n  trainer.rendezvous: Optional[str] = None  # HOST:PORT where the nodes meet" in proc.stdout
    assert "schema/" not in proc.stdout and "trial" not in proc.stdout  # no internal groups or keys
    imported = {line.split("|")[-1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")}
    assert not imported & {"torch", "optuna", "mlflow", "torchvision", "matplotlib"}


@pytest.mark.slow
def test_a_run_imports_only_what_its_config_uses(tmp_path):
    """No Optuna outside a sweep, no MLflow without tracking, no torchvision for digits' small_cnn, no
    scikit-learn or plotly without the t-SNE analysis: each costs every start up to a second."""
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "imgexp", "tracking=none", "analysis=none",
                           "epochs=1", "data.subset=100", "progress=false"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    imported = {line.split("|")[-1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")}
    assert "torch" in imported and "matplotlib" in imported  # the test sees imports: the plots load it at the end
    assert not imported & {"optuna", "mlflow", "torchvision", "sklearn", "plotly"}
