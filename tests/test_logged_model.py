"""After training: the run's MLflow model (pyfunc, signature, input example, registry), its data sets as MLflow
inputs, ``python -m imgexp.predict`` on image files and ``python -m imgexp.evaluate`` on a data set."""
from __future__ import annotations

import csv
import json
import io
import logging
import os
import shutil
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import yaml
from mlflow import MlflowClient
from PIL import Image

from conftest import CLASSES, run_cli, write_image
from imgexp.data import split
from imgexp.data.sources import load_source
from imgexp.evaluate import EVALUATED_TAG
from imgexp.run import run

SHARED_CIFAR = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "cifar10"


def run_id_of(workdir: Path, name: str | None = None) -> str:
    client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()], order_by=["start_time DESC"],
                              filter_string=f"attributes.run_name = '{name}'" if name else "")
    return runs[0].info.run_id


@pytest.fixture
def client(workdir):
    return MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")


@pytest.fixture
def digits_run(workdir, compose_cfg):
    """A default run (small_cnn on digits), 1 epoch, registered as digits-cnn: (cfg, run id)."""
    cfg = compose_cfg("epochs=1", "analysis=none", "progress=false", "tracking.register=digits-cnn")
    run(cfg, workdir / "out")
    return cfg, run_id_of(workdir)


def test_a_run_logs_its_best_model_with_signature_example_and_registration(digits_run, client, workdir):
    cfg, run_id = digits_run
    finished = client.get_run(run_id)
    (output,) = finished.outputs.model_outputs
    model = client.get_logged_model(output.model_id)
    assert model.name == "model" and model.source_run_id == run_id and str(model.status) == "READY"
    assert model.experiment_id == finished.info.experiment_id
    linked = {m.key: m.value for m in model.metrics}  # the run's test metrics, on the model's page
    assert linked["test/acc"] == finished.data.metrics["test/acc"]

    info = mlflow.models.get_model_info(f"runs:/{run_id}/model")
    # no input schema (MLflow would cast floats to uint8 before the model checks them): metadata says it
    assert info.signature.inputs is None and "(N, H, W) of any H and W" in info.metadata["input"]
    assert [c["name"] for c in info.signature.outputs.to_dict()][:3] == ["class", "probability", "prob_0"]
    assert info.saved_input_example_info["type"] == "ndarray"
    pyfunc = info.flavors["python_function"]
    assert pyfunc["loader_module"] == "imgexp.classifier" and "python_model" not in pyfunc  # nothing pickled
    files = [f.path for f in mlflow.artifacts.list_artifacts(f"models:/{output.model_id}")]
    assert "data" in files and not [f for f in files if f.endswith((".pkl", ".pickle", ".cloudpickle"))]

    (version,) = client.search_model_versions("name = 'digits-cnn'")
    assert str(version.version) == "1" and version.run_id == run_id
    assert finished.data.tags["imgexp.registered"] == "digits-cnn/1"
    assert mlflow.pyfunc.load_model("models:/digits-cnn/1").metadata.model_id == output.model_id


def test_pyfunc_predicts_the_runs_own_test_classes(digits_run, client, tmp_path):
    """The logged model, loaded by MLflow alone, classifies the raw test images exactly as the run did: its
    predictions give the run's logged confusion matrix and test/acc."""
    cfg, run_id = digits_run
    test = split(load_source(cfg.data), cfg.data)[2]  # the run's test split, uint8 (N, 1, 8, 8)
    images = test.x[:, 0].numpy()  # a stack of gray images: (N, H, W)
    model = mlflow.pyfunc.load_model(f"runs:/{run_id}/model")
    predicted = model.predict(images)
    assert list(predicted.columns[:2]) == ["class", "probability"] and len(predicted) == len(images)
    assert np.allclose(predicted.filter(like="prob_").sum(1), 1.0, atol=1e-5)
    truth = [str(int(y)) for y in test.y]
    logged = pd.read_csv(io.StringIO(mlflow.artifacts.load_text(
        f"runs:/{run_id}/metrics/confusion_matrix.csv")), index_col=0)
    ours = pd.crosstab(pd.Series(truth, name="true"), predicted["class"]).reindex(
        index=logged.index.astype(str), columns=logged.columns, fill_value=0)
    assert (ours.to_numpy() == logged.to_numpy()).all()
    assert np.mean(predicted["class"].to_numpy() == np.array(truth)) == client.get_run(run_id).data.metrics["test/acc"]
    # float images in 0..1, and images of several sizes, as a ragged (object) array
    mixed = np.empty(3, dtype=object)
    mixed[:] = [images[0].astype(np.float32) / 255, images[1][..., None],
                np.kron(images[2], np.ones((3, 3), np.uint8))]
    again = model.predict(mixed)
    assert again["class"].tolist()[:2] == predicted["class"].tolist()[:2]
    assert abs(again["probability"][0] - predicted["probability"][0]) < 1e-5
    assert model.predict(images[:0]).empty  # no image: an empty table, not an error
    # float images in 0..1: a batch, and same-size images as np.array(list, dtype=object), as the ints
    floats = images[:20].astype(np.float64) / 255
    for batch in (floats, np.array(list(floats), dtype=object), np.array(list(images[:20]), dtype=object)):
        scored = model.predict(batch)
        assert scored["class"].tolist() == predicted["class"].tolist()[:20]
        assert np.allclose(scored["probability"], predicted["probability"][:20], atol=1e-5)
    # pixels out of their range are refused with their range, never cast
    top = images[0].max()  # the first image is refused
    for bad, says in ((floats * 255, "float pixels are read as 0..1 (torchvision's ToTensor scale), these are "
                                     f"0..{top}: send integers 0..255"),
                      (np.array([[[-1, 300]]]), "integer pixels must be 0..255, these are -1..300"),
                      (np.full((1, 8, 8), np.nan), "float pixels are read as 0..1"),
                      (images[:2].astype(str), "pixels must be integers 0..255 or floats 0..1, got <U"),
                      (images[:2] > 3, "pixels must be integers 0..255 or floats 0..1, got bool"),
                      (np.zeros((1, 0, 8), np.uint8), "an image must be (H, W) or (H, W, C) pixels, got shape (0,")):
        with pytest.raises(mlflow.exceptions.MlflowException) as refused:
            model.predict(bad)
        assert says in refused.value.message and refused.value.get_http_status_code() == 400
    # (N, H, W, 1) through imgexp's own Classifier (MLflow's schema takes a 1-channel model's images as (N, H, W))
    from imgexp.tracking.logged_model import load_classifier

    ours = load_classifier(run_id, client.tracking_uri).predict(images[..., None])
    assert ours["class"].tolist() == predicted["class"].tolist()


def post_json(url: str, body: dict) -> tuple[int, dict]:
    import urllib.error
    import urllib.request

    request = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_the_served_model_answers_integer_and_float_pixels_and_refuses_others_with_400(digits_run, tmp_path):
    """``mlflow models serve`` of the logged model: JSON integers 0..255 and floats 0..1 get the same classes
    (floats were cast to uint8 zeros by the old uint8 signature: HTTP 200 with a wrong class); float pixels
    0..255, strings and a DataFrame are one 400 line each."""
    import signal
    import subprocess
    import sys
    import time

    from slurm_cluster import free_port

    cfg, run_id = digits_run
    folder = mlflow.artifacts.download_artifacts(f"runs:/{run_id}/model", dst_path=str(tmp_path / "model"))
    test = split(load_source(cfg.data), cfg.data)[2]
    images = test.x[:8, 0].numpy()
    expected = mlflow.pyfunc.load_model(folder).predict(images)["class"].tolist()
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "mlflow", "models", "serve", "-m", folder, "--env-manager",
                               "local", "-h", "127.0.0.1", "-p", str(port)], cwd=tmp_path, start_new_session=True,
                              env={**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"},
                              stdout=subprocess.DEVNULL, stderr=open(tmp_path / "serve.log", "w"))
    url = f"http://127.0.0.1:{port}/invocations"
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            assert server.poll() is None, (tmp_path / "serve.log").read_text()[-2000:]
            try:
                status, answer = post_json(url, {"inputs": images.tolist()})
                break
            except OSError:
                time.sleep(0.3)
        assert status == 200 and [p["class"] for p in answer["predictions"]] == expected
        status, answer = post_json(url, {"inputs": (images / 255).tolist()})
        assert status == 200 and [p["class"] for p in answer["predictions"]] == expected
        for body, says in (({"inputs": (images * 1.0).tolist()}, "float pixels are read as 0..1 (torchvision's "
                            f"ToTensor scale), these are 0..{images[0].max()}: send integers 0..255, or floats "
                            "divided by 255"),
                           ({"inputs": [[["a"]]]}, "pixels must be integers 0..255 or floats 0..1, got <U1 values"),
                           ({"dataframe_split": {"columns": ["a"], "data": [[1]]}},
                            "images must be an array or tensor (N, H, W[, C]) or a list of images, got DataFrame")):
            status, answer = post_json(url, body)
            assert status == 400 and answer["error_code"] == "INVALID_PARAMETER_VALUE"
            assert answer["message"].splitlines()[-1] == f"Error: {says}"  # after MLflow's "Failed to predict"
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)


def test_a_run_logs_its_three_splits_as_datasets(digits_run, client, workdir, compose_cfg):
    cfg, run_id = digits_run
    inputs = client.get_run(run_id).inputs.dataset_inputs
    contexts = {i.tags[0].value: i.dataset for i in inputs}
    assert sorted(contexts) == ["test", "train", "val"]
    assert {d.name for d in contexts.values()} == {"digits"} and len({d.digest for d in contexts.values()}) == 3
    assert yaml.safe_load(contexts["test"].profile)["num_images"] == 270
    found = client.search_runs([client.get_run(run_id).info.experiment_id],
                               f"dataset.name = 'digits' and dataset.digest = '{contexts['train'].digest}'")
    assert [r.info.run_id for r in found] == [run_id]
    run(compose_cfg("epochs=1", "analysis=none", "progress=false", "data.subset=600", "tracking.log_model=false"),
        workdir / "out2")
    other = {i.tags[0].value: i.dataset.digest for i in client.get_run(run_id_of(workdir)).inputs.dataset_inputs}
    assert other["train"] != contexts["train"].digest  # another subset: another digest
    assert not client.get_run(run_id_of(workdir)).outputs.model_outputs  # tracking.log_model=false


def jpeg_tree(root: Path, per_class: int) -> Path:
    """root/{train,test}/<class>/*.jpg: noisy colour images a 1-epoch model gets partly right."""
    rng = np.random.default_rng(0)
    for split_, n in (("train", per_class), ("test", per_class // 2)):
        for label, name in enumerate(CLASSES):
            for i in range(n):
                pixels = rng.normal(60 + 50 * label, 60, (20, 20, 3)).clip(0, 255).astype(np.uint8)
                (root / split_ / name).mkdir(parents=True, exist_ok=True)
                Image.fromarray(pixels).save(root / split_ / name / f"{i}.jpg", quality=90)
    return root


def cifar_slice(root: Path, per_class: int) -> Path:
    """A slice of the shared CIFAR-10 JPEG folder: ``per_class`` training and half as many test files."""
    for split_, n in (("train", per_class), ("test", per_class // 2)):
        for folder in sorted((SHARED_CIFAR / split_).iterdir()):
            (root / split_ / folder.name).mkdir(parents=True)
            for f in sorted(folder.iterdir())[:n]:
                shutil.copy(f, root / split_ / folder.name / f.name)
    return root


@pytest.mark.slow
@pytest.mark.parametrize("images", ["generated", pytest.param("cifar10", marks=pytest.mark.skipif(
    not SHARED_CIFAR.is_dir(), reason=f"needs the CIFAR-10 image folder {SHARED_CIFAR}"))])
def test_predict_on_a_jpeg_folder_reproduces_the_runs_test_accuracy(images, workdir, client):
    root = jpeg_tree(workdir / "jpegs", 40) if images == "generated" else cifar_slice(workdir / "cifar", 30)
    out = run_cli("data=imagefolder", f"data.root={root}", "data.image_size=32", "epochs=1", "analysis=none",
                  "progress=false", "batch=32", cwd=workdir)
    assert out.returncode == 0, out.stderr
    run_id = run_id_of(workdir)
    (root / "test" / "broken.jpg").write_bytes(b"not an image")
    predicted = run_cli("predict", f"model={run_id}", f"images={root / 'test'}", "output_dir=pred", "topk=2",
                        cwd=workdir)
    assert predicted.returncode == 0, predicted.stderr
    assert "1 unreadable files:" in predicted.stdout and "broken.jpg" in predicted.stdout
    with open(workdir / "pred" / "predictions.csv") as f:
        rows = [r for r in csv.DictReader(f) if not r["error"]]
    truth = [Path(r["path"]).parent.name for r in rows]
    assert len(rows) == sum(1 for _ in (root / "test").rglob("*.jpg")) - 1
    accuracy = np.mean([r["class"] == t for r, t in zip(rows, truth)])
    assert accuracy == client.get_run(run_id).data.metrics["test/acc"]
    assert all(len(r["top2"].split("; ")) == 2 for r in rows)


def test_predict_lists_unreadable_files_and_draws_grad_cams(digits_run, workdir):
    from imgexp.predict import PredictConfig, predict

    cfg, run_id = digits_run
    test = split(load_source(cfg.data), cfg.data)[2]
    folder = workdir / "photos"
    for i in range(5):
        (folder / "sub").mkdir(parents=True, exist_ok=True)
        Image.fromarray(test.x[i, 0].numpy()).resize((24, 24)).save(folder / ("sub" if i % 2 else "") / f"{i}.png")
    (folder / "empty.png").write_bytes(b"")
    (folder / "notes.txt").write_text("not an image, not listed")
    summary = predict(PredictConfig(model=f"runs:/{run_id}/model", images=[str(folder), str(workdir / "nope.png")],
                                    cam=True, output_dir="x"), workdir / "pred")
    table = pd.read_csv(workdir / "pred" / "predictions.csv")
    assert len(table) == 7 and table.error.notna().sum() == 2  # 5 images; the empty file and the missing one
    assert "2 unreadable files:" in summary and "empty.png" in summary and "nope.png" in summary
    assert len(list((workdir / "pred" / "cam").glob("*.png"))) == 5


def test_predict_with_no_readable_image_is_one_line(digits_run, workdir):
    _, run_id = digits_run
    (workdir / "bad.png").write_text("x")
    out = run_cli("predict", f"model={run_id}", f"images={workdir / 'bad.png'}", cwd=workdir)
    assert out.returncode == 1 and out.stderr.strip().splitlines() == [
        f"imgexp: error: images: none of the 1 files could be read as an image: {workdir / 'bad.png'}"]
    out = run_cli("predict", "model=0123456789abcdef", "images=x.png", cwd=workdir)
    assert out.returncode == 1 and len(out.stderr.strip().splitlines()) == 1
    assert out.stderr.startswith("imgexp: error: model: cannot load runs:/0123456789abcdef/model")


def test_evaluate_reproduces_the_runs_test_metrics_in_a_linked_run(digits_run, client, workdir, caplog):
    cfg, run_id = digits_run
    out = run_cli("evaluate", f"run={run_id}", cwd=workdir)
    assert out.returncode == 0, out.stderr
    evaluation = client.get_run(run_id_of(workdir))
    trained = client.get_run(run_id)
    assert evaluation.info.run_id != run_id and evaluation.data.tags[EVALUATED_TAG] == run_id
    for key in ("test/acc", "test/f1_macro", "test/top2", "test/loss"):
        assert evaluation.data.metrics[key] == pytest.approx(trained.data.metrics[key], abs=1e-6), key
    assert evaluation.data.metrics["test/acc"] == trained.data.metrics["test/acc"]  # exactly
    assert evaluation.data.params["evaluation.trained_on"] == "digits"
    assert evaluation.data.params["model.name"] == "small_cnn"
    logged = {a.path for a in client.list_artifacts(evaluation.info.run_id, "metrics")}
    assert logged == {"metrics/per_class.csv", "metrics/confusion_matrix.csv"}
    assert [a.path for a in client.list_artifacts(evaluation.info.run_id, "plots")] == ["plots/confusion_matrix.png"]
    assert [i.tags[0].value for i in evaluation.inputs.dataset_inputs] == ["test"]


def test_evaluate_on_data_with_other_classes_is_one_line(digits_run, workdir):
    _, run_id = digits_run
    out = run_cli("evaluate", f"run={run_id}", "data=synthetic", cwd=workdir)
    assert out.returncode == 1
    assert out.stderr.strip().splitlines() == [
        "imgexp: error: data: classes square0, square1, square2, square3 are not among the model's 10 classes "
        "(0, 1, 2, 3, 4, 5, 6, 7, 8, 9)"]


def test_evaluate_on_another_folder_maps_classes_by_name(workdir, client):
    """Trained on one folder, evaluated on another whose test split holds two of the classes: labels are
    matched by class name, and the evaluation is a run of its own."""
    from conftest import class_tree

    first = class_tree(workdir / "a", per_class=12)
    second = workdir / "b"
    for label, name in list(enumerate(CLASSES))[1:]:
        for i in range(6):
            write_image(second / "train" / name / f"{i}.png", label)
            write_image(second / "test" / name / f"{i}.png", label)
    assert run_cli("data=imagefolder", f"data.root={first}", "epochs=1", "analysis=none", "progress=false",
                   cwd=workdir).returncode == 0
    run_id = run_id_of(workdir)
    out = run_cli("evaluate", f"run={run_id}", "data=imagefolder", f"data.root={second}", cwd=workdir)
    assert out.returncode == 0, out.stderr
    evaluation = client.get_run(run_id_of(workdir))
    assert evaluation.data.params["data.root"] == str(second) and "on imagefolder test" in evaluation.info.run_name
    per_class = pd.read_csv(io.StringIO(mlflow.artifacts.load_text(
        f"runs:/{evaluation.info.run_id}/metrics/per_class.csv")))
    assert per_class["support"].tolist() == [0, 6, 6]  # the model's three classes; the data's two


def test_no_tracking_logs_no_model(workdir, compose_cfg, caplog):
    with caplog.at_level(logging.INFO):
        run(compose_cfg("epochs=1", "analysis=none", "progress=false", "tracking=none"), workdir / "out")
    assert not (workdir / "mlflow.db").exists()
    assert not [r for r in caplog.records if "logged the best model" in r.getMessage()]


@pytest.mark.slow
def test_a_sweep_registers_its_best_jobs_model_once(workdir, client):
    sweep = ["-m", "optimizer.lr=0.003,0.00001", "epochs=1", "analysis=none", "progress=false",
             "tracking.register=digits-best"]
    assert run_cli(*sweep, cwd=workdir).returncode == 0
    experiment = client.get_experiment_by_name("imgexp").experiment_id
    (parent,) = client.search_runs([experiment], "tags.`imgexp.role` = 'sweep'")
    children = client.search_runs([experiment], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    best = max(children, key=lambda r: r.data.metrics["val/acc_best"])
    assert best.data.params["optimizer.lr"] == "0.003"
    (version,) = client.search_model_versions("name = 'digits-best'")  # the sweep's, not one per job
    assert version.run_id == best.info.run_id and str(version.version) == "1"
    assert parent.data.tags["imgexp.registered"] == "digits-best/1"
    assert not [r for r in children if "imgexp.registered" in r.data.tags]
    assert run_cli(*sweep, cwd=workdir).returncode == 0  # again: jobs reused, the trained run's model registered
    versions = client.search_model_versions("name = 'digits-best'")
    assert sorted(str(v.version) for v in versions) == ["1", "2"] and {v.run_id for v in versions} == {best.info.run_id}


def test_dataset_inputs_wait_in_the_spool_while_the_server_is_away(workdir, client):
    """Logged while the tracking server is unreachable, the splits are spooled and sent with the rest."""
    from imgexp.data.records import SplitRecord
    from imgexp.tracking.tracker import MlflowTracker

    experiment = client.create_experiment("spooled")
    run_id = client.create_run(experiment).info.run_id
    tracker = MlflowTracker(client, run_id, "sqlite:///unused", workdir / "spool")
    tracker.offline, tracker.last_try = True, float("inf")  # as after a failed call: spool, do not retry yet
    records = [SplitRecord("photos", s, "/data/photos", f"{i:016x}", 10 + i, ["a", "b"])
               for i, s in enumerate(("train", "val", "test"))]
    tracker.log_datasets(records)
    assert not client.get_run(run_id).inputs.dataset_inputs and tracker.spool.pending() == 1
    assert tracker.spool.send(client) == 1
    inputs = client.get_run(run_id).inputs.dataset_inputs
    assert sorted((i.tags[0].value, i.dataset.digest) for i in inputs) == [
        ("test", "0000000000000002"), ("train", "0000000000000000"), ("val", "0000000000000001")]
    assert {i.dataset.source for i in inputs} == {'{"uri": "/data/photos"}'}


def test_runs_started_together_log_their_shared_dataset_again_after_the_race():
    """Two runs inserting the same data set row at once: the store's unique constraint fails one; it logs
    again. Any other error is raised at once."""
    from imgexp.data.records import SplitRecord
    from imgexp.tracking.store import log_inputs

    class Store:
        def __init__(self, errors):
            self.errors, self.calls = list(errors), 0

        def log_inputs(self, run_id, datasets):
            self.calls += 1
            if self.errors:
                raise self.errors.pop(0)

    from dataclasses import asdict

    rows = [asdict(SplitRecord("digits", "train", "imgexp:digits", "0" * 16, 9, ["a", "b"]))]
    race = Store([RuntimeError("(sqlite3.IntegrityError) UNIQUE constraint failed: datasets.experiment_id")])
    log_inputs(race, "r", rows)
    assert race.calls == 2
    broken = Store([RuntimeError("no such table: datasets")])
    with pytest.raises(RuntimeError, match="no such table"):
        log_inputs(broken, "r", rows)
    assert broken.calls == 1


def test_an_interpolation_in_a_models_spec_is_read_as_written(digits_run, workdir, monkeypatch):
    """A spec is saved resolved: a ``${oc.env:...}`` in it (an edited or a hostile file) stays text, and the
    variable's value reaches no error line."""
    _, run_id = digits_run
    folder = Path(mlflow.artifacts.download_artifacts(f"runs:/{run_id}/model", dst_path=str(workdir / "m"),
                                                      tracking_uri=f"sqlite:///{workdir / 'mlflow.db'}"))
    spec_file = folder / "data" / "classifier" / "imgexp_model.json"
    spec = json.loads(spec_file.read_text())
    spec["model"]["name"] = "${oc.env:IMGEXP_TEST_SECRET}"
    spec_file.write_text(json.dumps(spec))
    monkeypatch.setenv("IMGEXP_TEST_SECRET", "the-value")
    write_image(workdir / "one.png", 1, size=8, mode="L")
    out = run_cli("predict", f"model={folder}", f"images={workdir / 'one.png'}", cwd=workdir)
    assert out.returncode == 1 and len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert "${oc.env:IMGEXP_TEST_SECRET}" in out.stderr and "the-value" not in out.stdout + out.stderr


def test_predict_and_evaluate_of_a_deleted_runs_model_say_it_is_deleted(digits_run, client, workdir):
    _, run_id = digits_run
    client.delete_run(run_id)
    write_image(workdir / "one.png", 1, size=8, mode="L")
    warning = f"the model's run {run_id} (small_cnn-digits) is deleted in MLflow"
    out = run_cli("predict", f"model={run_id}", f"images={workdir / 'one.png'}", "output_dir=pred", cwd=workdir)
    assert out.returncode == 0, out.stderr[-2000:]
    assert (out.stdout + out.stderr).count(warning) == 1
    out = run_cli("evaluate", f"run={run_id}", cwd=workdir)
    assert out.returncode == 0, out.stderr[-2000:]
    assert (out.stdout + out.stderr).count(warning) == 1
    (evaluation,) = client.search_runs([client.get_run(run_id).info.experiment_id],
                                       f"tags.`{EVALUATED_TAG}` = '{run_id}'")
    assert evaluation.data.tags["mlflow.note.content"] == (f"Evaluates the model of run {run_id}, which is deleted "
                                                           "in MLflow.")


PREDICT_IN_VENV = """
import importlib.util, sys
import numpy as np
import mlflow.pyfunc
assert importlib.util.find_spec("imgexp") is None, "imgexp is installed here"
model = mlflow.pyfunc.load_model(sys.argv[1])
images, truth = np.load(sys.argv[2]), np.load(sys.argv[3])
predicted = model.predict(images)["class"].astype(int).to_numpy()
print("acc", repr(float(np.mean(predicted == truth))))
"""


@pytest.mark.slow
def test_the_logged_model_loads_in_a_venv_of_its_own_requirements_alone(digits_run, client, tmp_path):
    """What ``mlflow models serve --env-manager virtualenv`` or a Dockerfile from ``generate-dockerfile`` does:
    a fresh venv, ``pip install -r`` the model's requirements.txt (no imgexp: it travels as the model's code),
    then MLflow loads the model and it scores the run's test/acc on the run's test images."""
    import subprocess
    import sys

    cfg, run_id = digits_run
    folder = Path(mlflow.artifacts.download_artifacts(f"runs:/{run_id}/model", dst_path=str(tmp_path / "model")))
    requirements = (folder / "requirements.txt").read_text().split()
    assert not [r for r in requirements if r.startswith("imgexp")] and (folder / "code" / "imgexp").is_dir()
    test = split(load_source(cfg.data), cfg.data)[2]
    np.save(tmp_path / "x.npy", test.x[:, 0].numpy())
    np.save(tmp_path / "y.npy", test.y.numpy())
    (tmp_path / "predict.py").write_text(PREDICT_IN_VENV)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    pip = subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "-r", str(folder / "requirements.txt")],
                         capture_output=True, text=True, timeout=900)
    assert pip.returncode == 0, pip.stderr[-3000:]
    done = subprocess.run([str(venv / "bin" / "python"), str(tmp_path / "predict.py"), str(folder),
                           str(tmp_path / "x.npy"), str(tmp_path / "y.npy")], capture_output=True, text=True,
                          timeout=300, cwd=tmp_path, env={"PATH": os.environ["PATH"], "HOME": str(tmp_path)})
    assert done.returncode == 0, done.stderr[-3000:]
    accuracy = float(done.stdout.split("acc ")[-1])
    assert accuracy == client.get_run(run_id).data.metrics["test/acc"]
