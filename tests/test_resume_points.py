"""Where a resumed run's checkpoints come from (imgexp.tracking.resume.from_run), in-process: the run's
folder on this machine, or its logged copy when the folder is gone."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from mlflow import MlflowClient

from imgexp.tracking import resume
from imgexp.tracking.store import CHECKPOINT_DIR_TAG


def logged_run(tmp_path: Path) -> tuple[MlflowClient, object, Path]:
    """A run whose checkpoint folder (``checkpoints/<run id>``) holds last.pt and best.pt ("local"), with
    copies logged under its artifacts' checkpoints/ ("logged")."""
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.create_experiment("e", artifact_location=str(tmp_path / "artifacts"))
    run_id = client.create_run(exp).info.run_id
    folder = tmp_path / "out" / "checkpoints" / run_id
    folder.mkdir(parents=True)
    for name in ("last.pt", "best.pt"):
        (folder / name).write_text(f"logged {name}")
        client.log_artifact(run_id, str(folder / name), "checkpoints")
        (folder / name).write_text(f"local {name}")
    client.set_tag(run_id, CHECKPOINT_DIR_TAG, str(folder))
    return client, client.get_run(run_id), folder


def test_the_run_folder_on_this_machine_is_copied(tmp_path):
    client, run, folder = logged_run(tmp_path)
    point = resume.from_run(client, run, tmp_path / "staged", "source")
    assert point.run_id == run.info.run_id and point.origin == folder
    assert [(tmp_path / "staged" / n).read_text() for n in ("last.pt", "best.pt")] == ["local last.pt",
                                                                                      "local best.pt"]


@pytest.mark.parametrize("lost_before", ["last.pt", "best.pt"])
def test_a_folder_removed_while_it_is_copied_falls_back_to_the_logged_copy(tmp_path, monkeypatch, lost_before):
    """Two processes resume one run: the one that claims it first removes the run's old folder, maybe while
    the other copies from it (that one then met FileNotFoundError instead of "still running")."""
    client, run, folder = logged_run(tmp_path)
    copy = shutil.copy2

    def copy_while_the_folder_goes(src, dst, **kw):
        if Path(src).parent == folder and Path(src).name == lost_before:
            shutil.rmtree(folder)  # between the check that the file exists and its copy
        return copy(src, dst, **kw)

    monkeypatch.setattr(resume.shutil, "copy2", copy_while_the_folder_goes)
    point = resume.from_run(client, run, tmp_path / "staged", "source")
    assert point.run_id == run.info.run_id
    assert [(tmp_path / "staged" / n).read_text() for n in ("last.pt", "best.pt")] == ["logged last.pt",
                                                                                      "logged best.pt"]


@pytest.mark.parametrize("recorded,now,advice", [
    # a default that changed since the run started (trainer.channels_last: false before null): pass the record
    ({"trainer.channels_last": False}, [], "pass trainer.channels_last=false (as recorded"),
    ({"optimizer.lr": 0.01, "model.name": "resnet18"}, [],
     "pass model.name=resnet18 optimizer.lr=0.01 (as recorded"),
    # a key the record lacks has no value to pass: drop the override that brought it
    ({}, ["optimizer=sgd"], "drop these overrides"),
])
def test_resuming_another_config_says_which_keys_differ_and_what_to_pass(compose_cfg, recorded, now, advice):
    from omegaconf import OmegaConf

    from imgexp.config import ConfigError, config_hash

    cfg = compose_cfg(*now)
    config = OmegaConf.to_container(compose_cfg(), resolve=True)
    for key, value in recorded.items():
        group, name = key.split(".")
        config[group][name] = value
    with pytest.raises(ConfigError) as err:
        resume.check_config({"extra": {"config": config}}, cfg, config_hash(cfg), "run R")
    assert err.value.key == "resume" and advice in err.value.reason
    assert err.value.reason.startswith("run R was trained with another config (")
    for key, value in recorded.items():
        assert f"{key}: {value} -> " in err.value.reason
    resume.check_config({"extra": {"config": OmegaConf.to_container(cfg, resolve=True)}}, cfg, "", "run R")


def test_an_interrupted_run_resumes_by_auto_folder_or_id_and_a_sweep_job_then_reuses_it(compose_cfg, workdir,
                                                                                      monkeypatch):
    """In-process: stopped after a step (as on SIGTERM), resumed with resume=auto and stopped again, resumed
    from its output folder to the end; the FINISHED run is not resumed again, and a sweep job of its config
    reuses it instead of training."""
    import signal

    from imgexp.config import ConfigError
    from imgexp.run import run
    from imgexp.train import Trainer, TrainingInterrupted

    fit = Trainer.fit

    def stopped_after_a_step(self, *args, **kwargs):
        self.request_stop(signal.SIGTERM)
        return fit(self, *args, **kwargs)

    args = ("epochs=2", "progress=false", "analysis=none", "data.subset=300", "tracking.experiment=resume")
    monkeypatch.setattr(Trainer, "fit", stopped_after_a_step)
    with pytest.raises(TrainingInterrupted, match="in epoch 1/2, after 64 images"):
        run(compose_cfg(*args), workdir / "first")
    with pytest.raises(TrainingInterrupted, match="in epoch 1/2, after 128 images"):
        run(compose_cfg(*args, "resume=auto"), workdir / "second")
    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    (killed,) = client.search_runs([client.get_experiment_by_name("resume").experiment_id])
    assert killed.info.status == "KILLED"
    monkeypatch.setattr(Trainer, "fit", fit)
    value = run(compose_cfg(*args, f"resume={workdir / 'second'}"), workdir / "third")
    (finished,) = client.search_runs([killed.info.experiment_id])
    assert finished.info.run_id == killed.info.run_id and finished.info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(finished.info.run_id, "val/acc")] == [1, 2]
    assert value == finished.data.metrics["val/acc_best"]
    with pytest.raises(ConfigError, match="is FINISHED: there is nothing to resume"):
        run(compose_cfg(*args, f"resume={finished.info.run_id}"), workdir / "fourth")

    parent = client.create_run(killed.info.experiment_id).info.run_id  # a sweep's parent run
    assert run(compose_cfg(*args, f"+tracking.parent_run_id={parent}"), workdir / "job") == value
    reused = client.search_runs([killed.info.experiment_id], f"tags.`imgexp.reused_from` = '{finished.info.run_id}'")
    assert len(reused) == 1 and reused[0].data.tags["mlflow.parentRunId"] == parent
    assert reused[0].data.metrics == finished.data.metrics
