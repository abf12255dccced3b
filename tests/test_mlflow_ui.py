"""The MLflow UI, as a user opens it from the link at the end of a run: a real ``mlflow server`` and
headless Chromium find the run's page (its logged model and its three data sets among it) and the
experiment's runs table, not MLflow 3's empty GenAI view."""
from __future__ import annotations

import logging
import time

import pytest
from mlflow import MlflowClient

from chromium import CHROMIUM, Chromium
from imgexp.run import run
from test_reliability import Server

pytestmark = pytest.mark.slow  # real processes: left out of the quick tier (README, Tests)


def wait_for_text(browser: Chromium, *texts: str, timeout: float = 60) -> str:
    """The page's text once it shows every one of ``texts``."""
    deadline = time.monotonic() + timeout
    while True:
        page = browser.evaluate("document.body.innerText")
        if all(t in page for t in texts):
            return page
        assert time.monotonic() < deadline, f"{texts} not on the page; it shows: {page[:1500]}"
        time.sleep(0.5)


@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium package (/usr/bin/chromium)")
def test_the_link_a_run_ends_with_opens_it_in_the_mlflow_ui(workdir, compose_cfg, caplog, tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.5")  # a point every half second: this run is
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLES_BEFORE_LOGGING", "1")  # shorter than the default minute
    server = Server(workdir)
    server.start()
    try:
        cfg = compose_cfg(f"tracking.uri={server.uri}", "tracking.experiment=ui", "epochs=2", "data.subset=200",
                          "analysis=none", "progress=false")
        with caplog.at_level(logging.INFO, logger="imgexp.run"):
            run(cfg, workdir / "out")
        (line,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("results: ")]
        run_page = line.split()[-1]  # the line ends with the run's page
        experiment = MlflowClient(server.uri).get_experiment_by_name("ui")
        assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
        assert run_page.startswith(f"{server.uri}/#/experiments/{experiment.experiment_id}/runs/")

        browser = Chromium(tmp_path / "profile")
        try:
            browser.open(run_page)
            page = wait_for_text(browser, "small_cnn-digits", "Model metrics", "val/acc_best")
            assert "Evaluations" not in page and "Model registry" in page  # the model-training view
            page = wait_for_text(browser, "Logged models (1)", "Datasets")  # the run's model, loaded after the rest
            train = MlflowClient(server.uri).get_run(run_page.split("/runs/")[1].split("?")[0]).inputs.dataset_inputs
            digest = next(i.dataset.digest for i in train if i.tags[0].value == "train")
            assert f"digits ({digest})" in page and "+2" in page  # the train split shown, val and test behind +2
            browser.open("about:blank")  # a new document: a change of the URL's #fragment alone fires no load
            browser.open(run_page.split("/runs/")[0] + "?" + run_page.split("?")[1])  # the experiment
            page = wait_for_text(browser, "Run Name", "small_cnn-digits", "1 matching run")
            assert "No data available" not in page
            browser.screenshot(tmp_path / "experiment.png")
            run_id = run_page.split("/runs/")[1].split("?")[0]
            assert "system/cpu_utilization_percentage" in MlflowClient(server.uri).get_run(run_id).data.metrics
            browser.open("about:blank")
            browser.open(f"{run_page.split('?')[0]}/system-metrics?{run_page.split('?')[1]}")
            wait_for_text(browser, "cpu_utilization_percentage", "system_memory_usage_megabytes")
        finally:
            browser.close()
        assert (tmp_path / "experiment.png").stat().st_size > 10_000
    finally:
        server.stop()
