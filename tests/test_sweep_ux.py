"""Sweeps as a user lives them (issue 24): what a sweep ends with, what its jobs log, how trials and pruned
runs are named, the pruner's warm-up, and a run's summary."""
from __future__ import annotations

import logging
import re
from types import SimpleNamespace

import pytest
from mlflow import MlflowClient

from conftest import run_cli
from hydra_plugins.imgexp_optuna_sweeper.study import warmup_steps
from imgexp.report import summary

FAST = ["analysis=none", "progress=false", "data.subset=200"]


@pytest.mark.slow
def test_a_sweep_ends_with_its_parent_run_best_job_and_compare_command(workdir):
    proc = run_cli("-m", "optimizer.lr=0.003,0.00001", "epochs=1", *FAST, cwd=workdir)
    assert proc.returncode == 0, proc.stderr[-2000:]
    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("imgexp").experiment_id
    (parent,) = client.search_runs([experiment], "tags.`imgexp.role` = 'sweep'")
    children = client.search_runs([experiment], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    best = max(children, key=lambda r: r.data.metrics["val/acc_best"])
    tail = proc.stdout.strip().splitlines()[-3:]
    assert tail[0].endswith(f"sweep parent: MLflow run {parent.info.run_id}; see it with: mlflow ui "
                            f"--backend-store-uri sqlite:///{workdir / 'mlflow.db'} and open http://127.0.0.1:5000/"
                            f"#/experiments/{experiment}/runs/{parent.info.run_id}?workflowType=machine_learning")
    assert tail[1] == (f"best job: run {best.info.run_id} ({best.info.run_name}), val/acc_best "
                       f"{best.data.metrics['val/acc_best']:.4f}")
    assert tail[2] == f"compare its runs: python -m imgexp.compare sweep={parent.info.run_id}"
    done = next(line for line in proc.stdout.splitlines() if "sweep done: " in line)
    stored = sum(f.stat().st_size for f in (workdir / "mlruns").rglob("*") if f.is_file())
    said = float(re.search(r"its runs hold ([\d.]+) MB in MLflow", done).group(1))
    assert said == pytest.approx(stored / 1e6, abs=0.06)  # everything the sweep stored (its summary files: after)
    assert parent.data.metrics["sweep/stored_mb"] == pytest.approx(stored / 1e6, rel=0.02)
    assert "no unfinished run with config hash" not in proc.stdout + proc.stderr, "no resume was asked for"
    single = run_cli("epochs=1", *FAST, "resume=auto", "seed=5", cwd=workdir)
    assert "no unfinished run with config hash" in single.stdout, "asked for: said"


def test_the_summary_shows_one_epoch_and_the_test_metrics_of_its_weights():
    history = [{"train/loss": 1.0 - e / 10, "val/acc": a} for e, a in enumerate((0.5, 0.9, 0.7), start=1)]
    result = SimpleNamespace(history=history, best_epoch=2, test={"test/acc": 0.88}, stopped_epoch=None)
    text = summary(result, 3)
    assert text.splitlines()[0] == ("summary: epoch 2 of 3, the best val/acc, and the test metrics of its weights; "
                                    "the last epoch's val/acc 0.7000")
    assert text.splitlines()[1:] == ["  train/loss  0.8000", "  val/acc     0.9000", "  test/acc    0.8800"]
    last_is_best = summary(SimpleNamespace(history=history[:2], best_epoch=2, test={}, stopped_epoch=None), 2)
    assert "last epoch" not in last_is_best


@pytest.mark.parametrize("epochs,first_prunable", [(1, 2), (3, 2), (6, 2), (9, 3), (30, 10)])
def test_the_median_pruner_never_prunes_on_the_first_epoch(epochs, first_prunable):
    assert warmup_steps(epochs) == first_prunable


def test_trial_runs_are_named_with_four_significant_digits(workdir):
    proc = run_cli("-m", "hydra/sweeper=optuna", "hydra.sweeper.n_trials=1", "hydra.sweeper.sampler=random",
                   "hydra.sweeper.seed=3", "hydra.sweeper.study_name=names", "optimizer.lr=interval(1e-4,1e-3)",
                   "epochs=1", *FAST, cwd=workdir)
    assert proc.returncode == 0, proc.stderr[-2000:]
    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    (child,) = client.search_runs([client.get_experiment_by_name("imgexp").experiment_id],
                                  "tags.`imgexp.trial` = '0'")
    lr = float(child.data.params["optimizer.lr"])
    assert len(repr(lr)) > 10, "the trial trains with the full value"
    assert child.info.run_name == f"trial 0: optimizer.lr={float(f'{lr:.4g}')}"


@pytest.mark.parametrize("override,line", [
    ("epoch=3", "Could not override 'epoch'. Key 'epoch' not in 'Config' (did you mean epochs?)"),
    ("optimizer.lrr=0.1", "Could not override 'optimizer.lrr'. Key 'lrr' not in 'AdamConfig' (did you mean lr?)"),
    ("model.dropot=0.1", "Could not override 'model.dropot'. Key 'dropot' not in 'small_cnn_config' "
                         "(did you mean dropout or dense_dropout?)"),
    ("zzzz=1", "Could not override 'zzzz'. Key 'zzzz' not in 'Config'"),
])
def test_a_typo_gets_the_closest_key_names(workdir, override, line):
    proc = run_cli(override, cwd=workdir)
    assert proc.returncode == 1 and proc.stderr.strip().splitlines() == [f"imgexp: error: {line}"]


def test_an_unknown_option_lists_the_closest_first(workdir):
    proc = run_cli("model=resnet181", cwd=workdir)
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith("imgexp: error: In 'config': Could not find 'model/resnet181' (did you mean resnet18 "
                           "or resnet101 or resnet152?) (available: alexnet, ")


@pytest.mark.parametrize("stage,config", [("compare", "compare.yaml"), ("predict", "predict/predict.yaml"),
                                          ("evaluate", "evaluate.yaml")])
def test_a_stages_help_lists_its_keys_with_their_comments(workdir, stage, config):
    from conftest import CONF

    proc = run_cli(stage, "--help", cwd=workdir)
    assert proc.returncode == 0
    yaml_lines = (CONF / config).read_text().splitlines()
    header = [line[2:] for line in yaml_lines if line.startswith("# ")]
    assert proc.stdout.splitlines()[:len(header)] == header  # what it does, and example commands
    keys = [line for line in yaml_lines if re.match(r"^\w+:.*#", line) and not line.startswith("hydra")]
    assert len(keys) >= 5 and all(f"  {line}" in proc.stdout.splitlines() for line in keys)


def test_debug_fast_runs_one_batch_of_one_epoch_untracked(workdir):
    proc = run_cli("debug=fast", cwd=workdir)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "data digits: 64 train / 14 val / 14 test images" in proc.stdout and "epoch 1/1:" in proc.stdout
    assert "not tracked (tracking=none)" in proc.stdout and not (workdir / "mlflow.db").exists()
    assert "analysis (" not in proc.stdout


def test_debug_overfit_learns_its_one_batch(workdir):
    proc = run_cli("debug=overfit", cwd=workdir)
    assert proc.returncode == 0, proc.stderr[-2000:]
    last = next(line for line in proc.stdout.splitlines() if "epoch 30/30:" in line)
    assert "acc 1.0000 |" in last and "data digits: 64 train" in proc.stdout
    assert not (workdir / "mlflow.db").exists()


@pytest.mark.slow
def test_sweep_jobs_draw_light_plots_and_the_best_job_is_analysed_at_the_end(workdir):
    proc = run_cli("-m", "optimizer.lr=0.003,0.00001", "epochs=1", "progress=false", "data.subset=300",
                   "analysis.points=100", cwd=workdir)  # an analysis key: every job draws it
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "sweep jobs draw learning curves" not in proc.stdout
    proc = run_cli("-m", "optimizer.lr=0.003,0.00001", "epochs=1", "progress=false", "data.subset=300", "seed=1",
                   cwd=workdir)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "sweep jobs draw learning curves and confusion matrices only (analysis=none)" in proc.stdout
    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("imgexp").experiment_id
    parents = client.search_runs([experiment], "tags.`imgexp.role` = 'sweep'", order_by=["start_time ASC"])
    heavy = {}  # each sweep's best job: its t-SNE, Grad-CAM and feature-map plots
    for parent, light in zip(parents, (False, True)):
        children = client.search_runs([experiment], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
        best = max(children, key=lambda r: r.data.metrics["val/acc_best"])
        for child in children:
            plots = {a.path for a in client.list_artifacts(child.info.run_id, "plots")}
            assert {"plots/learning_curves.png", "plots/confusion_matrix.png"} <= plots
            analysed = {"plots/cam", "plots/tsne"} <= plots
            assert analysed == (not light or child.info.run_id == best.info.run_id), (light, plots)
        heavy[light] = {a.path for d in ("plots", "plots/cam", "plots/tsne")
                        for a in client.list_artifacts(best.info.run_id, d) if a.path.endswith(".png")} - {
            "plots/learning_curves.png", "plots/confusion_matrix.png"}
    # the end-of-sweep analysis is the one a job (or a run) draws with the default analysis: 15 plots here
    assert heavy[True] == heavy[False] and len(heavy[True]) == 15, heavy


def test_a_torchvision_built_for_another_torch_is_one_line_saying_what_to_install(workdir, monkeypatch):
    import sys

    import torch
    import torchvision

    from imgexp.runtime import TorchvisionMismatch, checked_torchvision

    assert checked_torchvision() is torchvision  # this machine's pair
    major, minor = (int(p) for p in torch.__version__.split("+")[0].split(".")[:2])
    monkeypatch.setattr(torchvision, "__version__", f"0.{minor + 14}.1")
    with pytest.raises(TorchvisionMismatch, match=rf"torchvision 0.{minor + 14}.1 is built for torch 2.{minor - 1}"):
        checked_torchvision()
    proc = run_cli("model=resnet18", "epochs=1", *FAST, "tracking=none", cwd=workdir)
    assert proc.returncode == 1
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith(f"imgexp: error: torchvision 0.{minor + 14}.1 is built for torch 2.{minor - 1}, not torch")
    assert f"pip install 'torch=={major}.{minor}.*' 'torchvision==0.{minor + 15}.*'" in line
    monkeypatch.setitem(sys.modules, "torchvision", None)  # torchvision's import fails (operator ... does not exist)
    with pytest.raises(TorchvisionMismatch, match="torchvision cannot load with torch"):
        checked_torchvision()


@pytest.mark.parametrize("policy,log_model,kept", [
    ("best", True, set()), ("last", True, {"last.pt"}), ("both", True, {"last.pt"}), ("none", True, set()),
    ("best", False, {"best.pt"}), ("both", False, {"best.pt", "last.pt"})])
def test_a_finished_run_keeps_the_checkpoints_its_policy_names(workdir, compose_cfg, policy, log_model, kept):
    """best.pt's bytes are the logged model's weights.pt: with the model logged, the run keeps that copy only
    (tag imgexp.best_weights) and resuming it (tracking.checkpoints=both) takes best.pt from there."""
    from imgexp.run import run
    from imgexp.tracking.resume import download_checkpoints

    run(compose_cfg("epochs=1", *FAST, f"tracking.checkpoints={policy}", f"tracking.log_model={log_model}"),
        workdir / "out")
    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    (r,) = client.search_runs([client.get_experiment_by_name("imgexp").experiment_id])
    assert {a.path.rsplit("/", 1)[-1] for a in client.list_artifacts(r.info.run_id, "checkpoints")} == kept
    assert ("imgexp.best_weights" in r.data.tags) == log_model
    assert download_checkpoints(client, r.info.run_id, workdir / "staged") == ("last.pt" in kept)
    if "last.pt" in kept and log_model:
        (weights,) = (workdir / "mlruns").glob("*/models/*/artifacts/data/classifier/weights.pt")
        assert (workdir / "staged" / "best.pt").read_bytes() == weights.read_bytes()
    elif "last.pt" in kept:
        assert (workdir / "staged" / "best.pt").exists() == ("best.pt" in kept)


def test_a_checkpoint_policy_typo_is_one_line(workdir):
    proc = run_cli("tracking.checkpoints=al", cwd=workdir)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        "imgexp: error: tracking.checkpoints: must be one of best, last, both, none, got 'al'"]


def test_early_stopping_ends_a_run_whose_metric_stalls(workdir, compose_cfg, caplog):
    """train/lr never changes without a scheduler: with patience 2 the run stops after epoch 3 of 10, tests
    the best weights, and records where it stopped."""
    from imgexp.run import run

    with caplog.at_level(logging.INFO):
        run(compose_cfg("epochs=10", *FAST, "trainer.early_stop_patience=2", "trainer.early_stop_metric=train/lr"),
            workdir / "out")
    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    (r,) = client.search_runs([client.get_experiment_by_name("imgexp").experiment_id])
    assert r.info.status == "FINISHED" and r.data.metrics["train/stopped_epoch"] == 3
    assert [m.step for m in client.get_metric_history(r.info.run_id, "val/acc")] == [1, 2, 3]
    assert "test/acc" in r.data.metrics
    messages = [rec.getMessage() for rec in caplog.records]
    assert "early stop after epoch 3: train/lr has not improved on epoch 1's 0.0010 for 2 epochs" in messages
    assert any("stopped early after epoch 3" in m for m in messages)


AVAILABLE = "(available: val/acc, val/loss, val/acc_best, train/loss, train/acc, train/lr"
CENTER = "train/center_intra, train/center_inter, train/center_ratio"


@pytest.mark.parametrize("metric,loss,line", [
    ("test/acc", "cross_entropy", f"'test/acc' is not an epoch metric of this run {AVAILABLE})"),
    ("val/acuracy", "cross_entropy",
     f"'val/acuracy' is not an epoch metric of this run (did you mean val/acc or val/acc_best?) {AVAILABLE})"),
    ("train/center_ratio", "cross_entropy", f"'train/center_ratio' is not an epoch metric of this run {AVAILABLE})"),
    ("train/center_ration", "kmeans_center", "'train/center_ration' is not an epoch metric of this run (did you "
                                             "mean train/center_ratio or train/center_intra or train/center_inter?) "
                                             f"{AVAILABLE}, {CENTER})"),
])
def test_an_early_stop_metric_no_epoch_logs_is_one_line_before_training(workdir, metric, loss, line):
    proc = run_cli("trainer.early_stop_patience=3", f"trainer.early_stop_metric={metric}", f"loss={loss}",
                   cwd=workdir)
    assert proc.returncode == 1 and proc.stderr.strip().splitlines() == [
        f"imgexp: error: trainer.early_stop_metric: {line}"]
    assert not (workdir / "mlflow.db").exists(), "stopped before the tracking store was opened"


@pytest.mark.slow
def test_hydra_optuna_sweeper_configs_work_unchanged(workdir):
    """Sampler and pruner nodes with a _target_, and custom_search_space, with hydra-optuna-sweeper's meaning."""
    import optuna

    proc = run_cli("-m", "hydra/sweeper=optuna", "hydra.sweeper.n_trials=3", "hydra.sweeper.study_name=upstream",
                   "hydra.sweeper.sampler={_target_: optuna.samplers.TPESampler, seed: 1, n_startup_trials: 5}",
                   "hydra.sweeper.pruner={_target_: optuna.pruners.MedianPruner, n_warmup_steps: 1}",
                   "hydra.sweeper.custom_search_space=sweep_space.extend", "optimizer.lr=interval(1e-4,1e-3)",
                   "epochs=2", *FAST, cwd=workdir)
    assert proc.returncode == 0, proc.stderr[-2000:]
    study = optuna.load_study(study_name="upstream", storage=f"sqlite:///{workdir / 'optuna' / 'upstream.db'}")
    assert len(study.trials) == 3 and all(t.state.name == "COMPLETE" for t in study.trials)
    assert all(set(t.params) == {"optimizer.lr", "batch"} for t in study.trials)
    assert study.user_attrs["imgexp.pruner"]["name"] == {"_target_": "optuna.pruners.MedianPruner",
                                                         "n_warmup_steps": 1}
    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("imgexp").experiment_id], "tags.`imgexp.trial` != ''")
    by_trial = {int(r.data.tags["imgexp.trial"]): r for r in runs}
    assert all(by_trial[t.number].data.params["batch"] == str(t.params["batch"]) for t in study.trials)


def test_a_composition_error_shows_its_cause(workdir):
    (workdir / "cfgs" / "experiment").mkdir(parents=True)
    (workdir / "cfgs" / "experiment" / "mine.yaml").write_text("# @package _global_\nhydra:\n  sweeper:\n"
                                                                "    bogus_key: 3\n")
    proc = run_cli("-m", "--config-dir", str(workdir / "cfgs"), "+experiment=mine", cwd=workdir)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        "imgexp: error: In 'experiment/mine': ConfigKeyError raised while composing config: Key 'bogus_key' not in "
        "'GridSweeperConf'"]


def test_plots_name_layers_by_role_and_tick_whole_epochs(compose_cfg):
    import pandas as pd

    from imgexp.analysis.common import describe_layer
    from imgexp.analysis.curves import learning_curves_figure
    from imgexp.analysis.pyplot import plt
    from imgexp.compare.report import curves_figure
    from imgexp.data import DataInfo
    from imgexp.models import create_model

    model = create_model(compose_cfg().model, DataInfo(1, 8, 8, 10, [str(k) for k in range(10)]))
    assert [describe_layer(model, n) for n in ("0.0.0", "0.8.0", "3", "4", "6")] == [
        "first conv layer (64 channels)", "last conv layer (256 channels)", "first dense layer (512 features)",
        "ReLU after the first dense layer (512 features)", "last dense layer (10 features)"]
    fig = learning_curves_figure([{"train/acc": .5, "val/acc": .6, "train/loss": 1.0, "val/loss": .9}])
    assert [list(ax.get_xticks()) for ax in fig.axes] == [[1], [1]]  # not 0.8 ... 1.2
    plt.close(fig)
    curves = pd.DataFrame([{"run": r, "column": c, "epoch": e, "split": s, "metric": m, "value": 0.5}
                           for r, c in (("a", "x"), ("b", "y")) for e in (1, 2) for s in ("train", "val")
                           for m in ("acc", "loss")])
    fig = curves_figure(curves, ["x", "y"], "model")
    fig.canvas.draw()
    left, right = fig.axes
    assert left.get_legend() is None  # one legend, beside the right plot, over no line
    renderer = fig.canvas.get_renderer()
    assert right.get_legend().get_window_extent(renderer).x0 >= right.get_window_extent(renderer).x1
    plt.close(fig)
