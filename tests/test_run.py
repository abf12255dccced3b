"""End to end: the CLI trains, MLflow holds the metrics, plots, config and checkpoint; runs are repeatable."""
from __future__ import annotations

import re
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from mlflow import MlflowClient
from mlflow.artifacts import download_artifacts
from omegaconf import OmegaConf
from PIL import Image

import imgexp.analysis
from imgexp.data import DataInfo
from imgexp.models import create_model
from imgexp.run import run
from imgexp.train import Trainer
from imgexp.checkpoint import load

from conftest import run_cli


def runs_of(workdir, experiment="imgexp"):
    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    exp = client.get_experiment_by_name(experiment)
    return client, client.search_runs([exp.experiment_id], order_by=["start_time ASC"])


@pytest.mark.slow
def test_cli_run_logs_everything(workdir):
    proc = run_cli("epochs=2", "tracking.experiment=e2e", cwd=workdir, process=True)  # the real entry point, once
    assert proc.returncode == 0, proc.stderr[-2000:]
    client, runs = runs_of(workdir, "e2e")
    assert len(runs) == 1
    r = runs[0]
    assert r.info.status == "FINISHED"
    for key in ("train/loss", "train/acc", "val/loss", "val/acc", "val/acc_best"):
        history = client.get_metric_history(r.info.run_id, key)
        assert [m.step for m in sorted(history, key=lambda m: m.step)] == [1, 2], key
    assert 0.5 < r.data.metrics["test/acc"] <= 1.0
    assert r.data.metrics["test/top2"] >= r.data.metrics["test/acc"]
    assert 0.0 < r.data.metrics["test/f1_macro"] <= 1.0
    assert r.data.metrics["model/params"] == 691_786  # small_cnn with a 1-channel stem
    assert r.data.params["epochs"] == "2" and r.data.params["optimizer.lr"] == "0.001"
    assert r.data.params["model.name"] == "small_cnn" and r.data.params["data.name"] == "digits"
    assert r.data.tags["imgexp.overrides"] == "epochs=2 tracking.experiment=e2e"
    assert r.data.tags["mlflow.runName"] == "small_cnn-digits"
    assert len(client.get_metric_history(r.info.run_id, "train/lr")) == 1, "a constant learning rate: logged once"
    assert [m.step for m in client.get_metric_history(r.info.run_id, "time/epoch_s")] == [1, 2]
    assert not [k for k in r.data.metrics if k.startswith("system/")], "a run shorter than a minute: no system point"

    # a log for a file, not a terminal: one line per epoch, then where everything went
    log = proc.stdout.splitlines()
    epochs = [line for line in log if "imgexp.train.trainer" in line]
    assert len(epochs) == 2 and all(re.search(r"epoch \d/2: train loss [\d.]+ acc [\d.]+ \| val loss [\d.]+ acc "
                                              r"[\d.]+ \| lr 0.001 \| [\d.]+ s, \d+ images/s$", e) for e in epochs)
    assert any(re.search(r"imgexp.analysis.report\]\[INFO\] - analysis \(default\) of the best model on \d+ test images",
                         line)
               for line in log)
    assert any(re.search(r"imgexp.analysis.report\]\[INFO\] - analysis done in [\d.]+ s$", line) for line in log)
    outputs = next(workdir.glob("outputs/*/*"))
    assert log[-1].endswith(f"results: output directory {outputs}; MLflow run {r.info.run_id}; see it with: mlflow "
                            f"ui --backend-store-uri sqlite:///{workdir / 'mlflow.db'} and open http://127.0.0.1:5000/"
                            f"#/experiments/{r.info.experiment_id}/runs/{r.info.run_id}?workflowType=machine_learning")
    assert not list(outputs.glob("checkpoints/*/*.pt")), "the checkpoints are in MLflow, not kept twice"

    files = {a.path for d in ("", "plots", "plots/cam", "plots/tsne", "checkpoints", "metrics")
             for a in client.list_artifacts(r.info.run_id, d)}
    layer = "3"  # small_cnn's first dense layer, the default t-SNE layer
    assert "checkpoints/last.pt" not in files, "tracking.checkpoints=best: last.pt goes once the run FINISHED"
    assert "checkpoints/best.pt" not in files, "the logged model's weights.pt holds the best weights: stored once"
    assert {"config.yaml", "plots/learning_curves.png", "plots/confusion_matrix.png",
            "metrics/per_class.csv", "metrics/confusion_matrix.csv", "plots/feature_maps.png",
            "plots/cam/correct_vs_wrong.png", "plots/cam/gradcam_depths.png",
            f"plots/tsne/final_{layer}_2d.png", f"plots/tsne/final_{layer}_3d.png"} <= files
    assert f"plots/tsne/final_{layer}_3d.html" not in files, "the 4.6 MB interactive page: analysis=full only"
    assert {f"plots/cam/class_{k}.png" for k in range(10)} <= files
    local = client.download_artifacts(r.info.run_id, "", str(workdir / "dl"))
    sizes = {p: p.stat().st_size for p in Path(local).rglob("*") if p.is_file()}
    assert sum(n for p, n in sizes.items() if p.parent.name != "checkpoints") <= 1_500_000
    assert "epochs: 2" in open(f"{local}/config.yaml").read()
    for png in ("learning_curves", "confusion_matrix", "feature_maps", "cam/correct_vs_wrong",
                f"tsne/final_{layer}_2d"):
        img = Image.open(f"{local}/plots/{png}.png").convert("L")
        assert img.width >= 400 and img.height >= 300
        lo, hi = img.getextrema()
        assert hi - lo > 100, "the plot is not blank"
    per_class = pd.read_csv(f"{local}/metrics/per_class.csv")
    assert list(per_class["class"].astype(str)) == list("0123456789") and per_class["support"].sum() == 270
    assert per_class["f1"].mean() == pytest.approx(r.data.metrics["test/f1_macro"], abs=1e-6)
    confusion = pd.read_csv(f"{local}/metrics/confusion_matrix.csv", index_col=0)
    assert np.trace(confusion.values) / confusion.values.sum() == pytest.approx(r.data.metrics["test/acc"])
    model_files = [p for p in (workdir / "mlruns").rglob("*") if p.is_file() and "/models/" in str(p)]
    weights = [p for p in [*sizes, *model_files] if p.suffix == ".pt"]
    assert [p.name for p in weights] == ["weights.pt"], "the best weights, stored once"
    stored = sum(sizes.values()) + sum(p.stat().st_size for p in model_files)
    assert stored <= 4_000_000, f"{stored / 1e6:.1f} MB stored for a default run"
    best = download_artifacts(artifact_uri=r.data.tags["imgexp.best_weights"], dst_path=str(workdir / "best"),
                              tracking_uri=f"sqlite:///{workdir / 'mlflow.db'}")
    assert Path(best).read_bytes() == weights[0].read_bytes()
    state = load(best)
    model = create_model(OmegaConf.create({"name": "small_cnn"}), DataInfo(1, 8, 8, 10, list("0123456789")))
    model.load_state_dict(state)  # strict: the checkpoint is a full small_cnn state dict


def history_of(compose_cfg, tmp_path, seed):
    cfg = compose_cfg("tracking=none", "epochs=2", f"seed={seed}", "progress=false", "device=cpu", "analysis=none")
    captured = []
    original = Trainer.fit

    def spy(self, *args, **kwargs):
        result = original(self, *args, **kwargs)
        captured.append(result)
        return result

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Trainer, "fit", spy)
        value = run(cfg, tempfile.mkdtemp(dir=tmp_path))
    return value, captured[0]


def test_same_seed_same_metrics(compose_cfg, tmp_path):
    v1, r1 = history_of(compose_cfg, tmp_path, seed=3)
    v2, r2 = history_of(compose_cfg, tmp_path, seed=3)
    _, r3 = history_of(compose_cfg, tmp_path, seed=4)
    assert v1 == v2 == r1.history[-1]["val/acc_best"]
    assert r1.history == r2.history and r1.test == r2.test
    assert torch.equal(r1.test_logits, r2.test_logits)
    assert r3.history != r1.history, "a different seed trains differently"


def test_system_metrics_go_to_the_run_unless_turned_off(compose_cfg, workdir, monkeypatch):
    """MLflow's system metrics of the machine, in the run; with the default sampling (a point a minute) a run this
    short logs none (test_cli_run_logs_everything), so here a point every half second."""
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.5")
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLES_BEFORE_LOGGING", "1")
    for on in (True, False):
        cfg = compose_cfg(f"tracking.system_metrics={on}", f"tracking.experiment=sys-{on}", "epochs=2",
                          "data.subset=200", "analysis=none", "progress=false")
        run(cfg, workdir / f"out-{on}")
        _, (r,) = runs_of(workdir, f"sys-{on}")
        system = {k for k in r.data.metrics if k.startswith("system/")}
        if on:
            assert {"system/cpu_utilization_percentage", "system/system_memory_usage_megabytes",
                    "system/disk_usage_megabytes", "system/network_receive_megabytes"} <= system, system
        else:
            assert not system


@pytest.mark.parametrize("sweep_job", [False, True])
def test_crash_marks_run_failed_and_keeps_what_was_logged(compose_cfg, workdir, monkeypatch, sweep_job):
    """A single run keeps its checkpoints (last.pt: each epoch's state, to resume from); a sweep's failed job
    keeps none (issue 24: storage), its metrics all the same."""
    def broken(*args, **kwargs):
        raise RuntimeError("plotting broke")

    monkeypatch.setattr(imgexp.analysis, "confusion_figure", broken)
    overrides = ["epochs=2", "progress=false", "tracking.experiment=crash", "analysis=none"]
    if sweep_job:
        client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
        parent = client.create_run(client.create_experiment("crash")).info.run_id
        overrides.append(f"tracking.parent_run_id={parent}")
    with pytest.raises(RuntimeError, match="plotting broke"):
        run(compose_cfg(*overrides), workdir / "out")
    client, runs = runs_of(workdir, "crash")
    (job,) = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == (parent if sweep_job else None)]
    assert job.info.status == "FAILED"
    assert len(client.get_metric_history(job.info.run_id, "val/acc")) == 2
    assert "test/acc" in job.data.metrics
    assert {a.path for a in client.list_artifacts(job.info.run_id, "checkpoints")} == (
        set() if sweep_job else {"checkpoints/best.pt", "checkpoints/last.pt"})


@pytest.mark.parametrize("asked,device,precision,expected", [
    (None, "cpu", "fp32", True),  # oneDNN's NHWC convolutions: the bare loop's speed (issue 25)
    (None, "cuda", "fp32", False),
    (None, "cuda", "bf16", True),
    (None, "mps", "fp32", False),
    (False, "cpu", "fp32", False),
    (True, "cuda", "fp32", True),
])
def test_channels_last_is_used_where_it_is_faster_unless_asked(asked, device, precision, expected):
    from imgexp.runtime import uses_channels_last
    from imgexp.train.schema import TrainerConfig

    trainer = TrainerConfig(precision=precision, channels_last=asked)
    assert uses_channels_last(trainer, torch.device(device)) is expected


@pytest.mark.parametrize("override,nhwc", [([], True), (["trainer.channels_last=false"], False)])
def test_a_cpu_run_trains_nhwc_by_default(compose_cfg, tmp_path, override, nhwc):
    from imgexp.build import build

    job = build(compose_cfg("device=cpu", "data=synthetic", "tracking=none", *override), tmp_path)
    conv = next(m for m in job.trainer.model.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last) is nhwc
    assert job.trainer.memory_format == (torch.channels_last if nhwc else torch.preserve_format)
