"""multirun_templates/: every template (found by globbing, never listed) documents its one command, composes every
job of its sweep to a distinct valid config, and smoke-runs its whole sweep on tiny generated data for one epoch
through the CLI: one FINISHED MLflow run per job, each with the job's swept values in its params.

Grid templates (Hydra's ``hydra.sweeper.params`` as a Cartesian product, under the basic or imgexp's grid sweeper)
run every job; search templates (a sweeper with ``n_trials``, such as Optuna) run 2 trials."""
from __future__ import annotations

import functools
import itertools
import shutil
from pathlib import Path

import pytest
from hydra import compose, initialize_config_module
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, RangeSweep
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf

from imgexp.config import validate

from conftest import CLASSES, HEAVY_MODELS, class_tree, run_cli, write_image

TEMPLATES = Path(__file__).resolve().parents[1] / "multirun_templates"
NAMES = sorted(p.stem for p in TEMPLATES.glob("*.yaml"))
OPTION_FILES = sorted(TEMPLATES.glob("*/*.yaml"))  # report_d_ablation/a.yaml ...: options a template sweeps
SEARCH_TRIALS = 2  # trials of a search template's smoke run
ANY_ROOT = "data.root=/x"  # some data sets have no default root (???); composing needs one


@functools.lru_cache(maxsize=None)
def compose_cached(name: str, overrides: tuple[str, ...], hydra: bool = False):
    return compose_template(name, overrides, hydra)


def compose_template(name: str, overrides=(), hydra: bool = False):
    """The config ``python -m imgexp -cn <name> <overrides>`` runs (the templates ship as imgexp.templates)."""
    with initialize_config_module(config_module="imgexp.conf", version_base=None):
        return compose(name, overrides=list(overrides), return_hydra_config=hydra)


def sweeper(name: str):
    return compose_cached(name, (ANY_ROOT,), hydra=True).hydra.sweeper


def n_trials(name: str) -> int | None:
    """A search template's number of trials; None for a grid template."""
    return sweeper(name).get("n_trials")


def parsed_params(name: str):
    params = sweeper(name).params
    assert params, f"{name}: no hydra.sweeper.params"
    return OverridesParser.create().parse_overrides([f"{k}={v}" for k, v in params.items()])


def sweep_jobs(name: str) -> list[list[str]]:
    """A grid template's jobs, each as its overrides: the Cartesian product of hydra.sweeper.params."""
    axes = []
    for override in parsed_params(name):
        key = override.get_key_element()
        values = (override.sweep_string_iterator() if override.is_sweep_override()
                  else [override.get_value_element_as_str()])
        axes.append([f"{key}={v}" for v in values])
    return [list(job) for job in itertools.product(*axes)]


def search_space(name: str) -> dict[str, object]:
    """A search template's ``{key: ChoiceSweep | IntervalSweep | RangeSweep}``."""
    return {o.get_key_element(): o.value() for o in parsed_params(name)}


def in_space(value: str, space) -> bool:
    if isinstance(space, ChoiceSweep):
        return value in {str(v) for v in space.list}
    if isinstance(space, IntervalSweep):
        return space.start <= float(value) <= space.end
    if isinstance(space, RangeSweep):
        return float(value) in {float(v) for v in range(space.start, space.stop, space.step)}
    return value == str(space)


def one_point(space) -> str:
    """A value inside a search space, to compose with."""
    if isinstance(space, ChoiceSweep):
        return str(space.list[0])
    if isinstance(space, (IntervalSweep, RangeSweep)):
        return str(space.start)
    return str(space)


def flat(node, prefix: str = "") -> dict[str, str]:
    """``{"optimizer.lr": "0.001", ...}``: a resolved config as MLflow params hold it."""
    out: dict[str, str] = {}
    for key, value in node.items():
        if isinstance(value, dict):
            out |= flat(value, f"{prefix}{key}.")
        elif key != "_partial_":
            out[f"{prefix}{key}"] = str(value)
    return out


def job_params(name: str, jobs: list[list[str]], extra=()) -> list[dict[str, str]]:
    return [flat(OmegaConf.to_container(compose_cached(name, (*job, *extra)), resolve=True)) for job in jobs]


def varying(params: list[dict[str, str]]) -> set[str]:
    """The keys whose values differ between a sweep's jobs."""
    return {k for k in set().union(*params) if len({p.get(k) for p in params}) > 1}


# ---------------------------------------------------------------- documentation and composition
def test_templates_found():
    assert len(NAMES) >= 8, NAMES


@pytest.mark.parametrize("name", NAMES)
def test_template_documents_its_command(name):
    lines = (TEMPLATES / f"{name}.yaml").read_text().splitlines()
    assert lines[0].startswith("# ") and len(lines[0]) > 20, "the first line says what the template runs"
    header = list(itertools.takewhile(lambda line: line.startswith("#"), lines))
    command = f"# python -m imgexp -m -cn {name}"
    assert any(line == command or line.startswith(command + " ") for line in header), "its one command"
    trials = n_trials(name)
    count = f"{trials} trials" if trials else f"{len(sweep_jobs(name))} jobs"
    assert count in " ".join(header), f"the header says how many runs the sweep makes: {count}"


@pytest.mark.parametrize("path", OPTION_FILES, ids=[f"{p.parent.name}/{p.stem}" for p in OPTION_FILES])
def test_sweep_option_documents_itself(path):
    group, option = path.parent.name, path.stem
    assert (TEMPLATES / f"{group}.yaml").is_file(), "each option group sits next to the template that sweeps it"
    lines = path.read_text().splitlines()
    assert lines[0] == "# @package _global_" and lines[1].startswith("# ") and len(lines[1]) > 20
    assert any(f"-cn {group} {group}={option}" in line for line in lines[:6]), "the command that runs it alone"
    assert option in sweeper(group).params[group].split(","), "the template's sweep runs it"


@pytest.mark.parametrize("name", NAMES)
def test_every_job_composes_validates_and_differs(name):
    if n_trials(name):  # a search: compose one point of its space
        point = [f"{k}={one_point(v)}" for k, v in search_space(name).items()]
        validate(compose_template(name, [*point, ANY_ROOT]))
        return
    jobs = sweep_jobs(name)
    assert len(jobs) >= 2
    configs = [compose_cached(name, (*job, ANY_ROOT)) for job in jobs]  # test_swept_option_takes_effect's too
    for cfg in configs:
        validate(cfg)  # the schemas' range checks, at the template's full-size settings
        assert cfg.tracking.experiment == name, "each template logs to an MLflow experiment of its name"
    params = [flat(OmegaConf.to_container(cfg, resolve=True)) for cfg in configs]
    # A group override in a template's defaults list silently wins over the same group's override in a swept
    # option file (report_d_ablation/c.yaml's scheduler, say): every job must really differ from every other.
    assert len({tuple(sorted(p.items())) for p in params}) == len(jobs), f"{name}: jobs that compose the same"
    # without -m, the template runs its first job
    assert flat(OmegaConf.to_container(compose_template(name, [ANY_ROOT]), resolve=True)) == params[0]


@pytest.mark.parametrize("path", OPTION_FILES, ids=[f"{p.parent.name}/{p.stem}" for p in OPTION_FILES])
def test_swept_option_takes_effect(path, compose_cfg):
    """Each group override and value of an option file is in its job's config: a template's defaults list that
    overrides the same group would silently win over the option's override."""
    group, option = path.parent.name, path.stem
    job = flat(OmegaConf.to_container(compose_cached(group, (f"{group}={option}", ANY_ROOT)), resolve=True))
    text = OmegaConf.load(path)
    defaults = text.pop("defaults", [])
    values = flat(OmegaConf.to_container(text, resolve=True))
    assert {k: job.get(k) for k in values} == values
    for entry in defaults:
        (key, choice), = entry.items()
        g = key.removeprefix("override").strip().lstrip("/")
        want = flat(OmegaConf.to_container(compose_cfg(f"{g}={choice}")[g], resolve=True), f"{g}.")
        want = {k: v for k, v in want.items() if k not in values}  # the option's own values go over its group's
        assert {k: job.get(k) for k in want} == want, f"{path.name}: override /{g}: {choice} lost"


def test_command_line_beats_template_and_swept_option():
    cfg = compose_template("report_b_model_zoo", ["report_b_model_zoo=googlenet", "epochs=2", "batch=8",
                                                  "data.root=/x", "data.image_size=32", "optimizer.lr=0.1"])
    assert (cfg.model.name, cfg.epochs, cfg.batch, cfg.data.root, cfg.data.image_size, cfg.optimizer.lr) == (
        "googlenet", 2, 8, "/x", 32, 0.1)
    cfg = compose_template("report_d_ablation", ["report_d_ablation=kmeans", "analysis=none"])
    assert cfg.loss._target_.endswith("KMeansCenterLoss") and cfg.analysis.name == "none"
    assert cfg.scheduler._target_ == "torch.optim.lr_scheduler.ExponentialLR"


# ---------------------------------------------------------------- tiny data, one tree per kind of source
def grey_tree(root: Path, per_class=6, size=16) -> Path:
    for split in ("train", "test"):
        for label, name in enumerate(CLASSES):
            for i in range(per_class):
                write_image(root / split / name / f"{i}.png", label, size, mode="L")
    return root


def catsdogs_folder(root: Path, per_class=12, size=16) -> Path:
    """The Kaggle layout: one flat folder of cat.N / dog.N images."""
    for label, name in enumerate(("cat", "dog")):
        for i in range(per_class):
            write_image(root / f"{name}.{i}.png", label, size)
    return root


TINY = {  # data.name -> (make a tiny tree at a path, overrides that fit the data set to it)
    "cifar10": (lambda root: class_tree(root, per_class=6), []),
    "mnist": (grey_tree, []),
    "imagenet_subset": (lambda root: class_tree(root, splits=("train", "val"), per_class=6),
                        [f"data.num_classes={len(CLASSES)}"]),
    "catsdogs": (catsdogs_folder, []),
}
# HEAVY_MODELS: several seconds a job on 2 cores, so the smoke runs leave them out (test_model_zoo trains each;
# every job of every template composes above).
SMOKE = ["epochs=1", "analysis=none", "progress=false", "device=cpu", "data.num_workers=0", "data.image_size=16",
         "model.pretrained=false"]  # report B's ResNet-50 starts from downloaded weights; not here, offline


def smoke_jobs(name: str) -> tuple[list[str], list[list[str]]]:
    """(overrides, jobs) of a grid template's smoke run: a one-axis sweep without its HEAVY_MODELS, given on the
    command line (where it wins over hydra.sweeper.params); any other sweep in full."""
    jobs = sweep_jobs(name)
    keys = {job_override.split("=", 1)[0] for job in jobs for job_override in job}
    if len(keys) != 1:
        return [], jobs
    light = [job for job in jobs if compose_cached(name, (*job, ANY_ROOT)).model.name not in HEAVY_MODELS]
    if len(light) == len(jobs):
        return [], jobs
    return [f"{keys.pop()}={','.join(job[0].split('=', 1)[1] for job in light)}"], light


def smoke_args(name: str, workdir: Path) -> list[str]:
    data_name = compose_template(name, [ANY_ROOT]).data.name
    assert data_name in TINY, f"{name}: add a tiny {data_name} tree to TINY"
    make, data_args = TINY[data_name]
    root = make(workdir / "data")
    sweep = [f"hydra.sweeper.n_trials={SEARCH_TRIALS}"] if n_trials(name) else smoke_jobs(name)[0]
    return [f"data.root={root}", f"data.cache_dir={workdir / 'cache'}", *data_args, *SMOKE, *sweep]


def job_runs(workdir: Path):
    """The MLflow runs of a sweep's jobs, without a sweeper's parent run."""
    client = MlflowClient(tracking_uri=f"sqlite:///{workdir / 'mlflow.db'}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()], max_results=1000)
    parents = {r.data.tags["mlflow.parentRunId"] for r in runs if "mlflow.parentRunId" in r.data.tags}
    return [r for r in runs if r.info.run_id not in parents]


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_template_sweep_runs_on_tiny_data(name, tmp_path):
    workdir = tmp_path
    args = smoke_args(name, workdir)
    proc = run_cli("-m", "-cn", name, *args, cwd=workdir)
    try:
        assert proc.returncode == 0, (proc.stdout[-3000:], proc.stderr[-3000:])
        runs = job_runs(workdir)
        assert all(r.info.status == "FINISHED" for r in runs)
        assert all(r.data.params["epochs"] == "1" and r.data.params["data.root"] == str(workdir / "data")
                   for r in runs), "epochs= and data.root= on the command line win over the template"

        if n_trials(name):
            assert len(runs) == SEARCH_TRIALS
            for key, space in search_space(name).items():
                assert all(in_space(r.data.params[key], space) for r in runs), key
            return

        jobs = smoke_jobs(name)[1]
        assert len(jobs) >= 2
        axes = {override.split("=", 1)[0] for override in jobs[0]}
        expected = job_params(name, jobs, [a for a in args if a.split("=", 1)[0] not in axes])
        assert len(runs) == len(expected), f"{len(runs)} MLflow runs for {len(expected)} jobs"
        assert {r.data.tags.get("mlflow.runName") for r in runs} == {p["tracking.run_name"] for p in expected}
        swept = varying(job_params(name, sweep_jobs(name), [ANY_ROOT]))  # what the sweep changes from job to job, at full size
        pool = list(runs)
        for want in expected:  # each job has its own run, with the job's swept values in its params
            keys = swept & set(want)
            match = next((r for r in pool if all(r.data.params.get(k) == want[k] for k in keys)), None)
            assert match is not None, f"no run with {({k: want[k] for k in sorted(keys)})}"
            pool.remove(match)
    finally:
        for big in ("mlruns", "multirun", "outputs"):  # checkpoints of the big models, twice
            shutil.rmtree(workdir / big, ignore_errors=True)
