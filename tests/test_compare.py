"""The comparison stage: tables rebuilt from MLflow runs alone match the values read back through MlflowClient,
missing cells say why, and the outputs (Markdown, CSV, LaTeX, HTML) are written and logged to the sweep."""
from __future__ import annotations

import math
import os
import re
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest
from hydra import compose, initialize_config_module
from mlflow import MlflowClient
from omegaconf import OmegaConf
from scipy import stats

from imgexp.compare.config import REPORT_B, register
from imgexp.compare.run import FILES, compare
from imgexp.compare.stats import fraction
from imgexp.config import ConfigError

from chromium import CHROMIUM, Chromium
from conftest import CONF, run_cli

register()
SWEEP = ("-m", "model=small_cnn,lenet", "seed=0,1", "epochs=1", "analysis=none", "data.subset=200", "progress=false")
ERROR = "RuntimeError: loss is NaN at epoch 2"


@dataclass
class Store:
    root: Path
    uri: str
    client: MlflowClient
    parent_id: str

    def sweep_runs(self, model: str) -> list[str]:
        """Run ids of the sweep's jobs that trained ``model``."""
        found = self.client.search_runs([self.client.get_run(self.parent_id).info.experiment_id],
                                        f"tags.`mlflow.parentRunId` = '{self.parent_id}' and "
                                        f"params.`model.name` = '{model}'")
        return [r.info.run_id for r in found]


def add_child(store: Store, model: str, tags: dict[str, str], epochs: list[dict[str, float]],
              final: dict[str, float], status: str = "FINISHED") -> None:
    """A child run of the sweep made with MlflowClient: per-epoch metrics at steps 1.., ``final`` once."""
    parent = store.client.get_run(store.parent_id)
    run_id = store.client.create_run(parent.info.experiment_id, tags={
        "mlflow.parentRunId": store.parent_id, "imgexp.sweep_id": parent.data.tags["imgexp.sweep_id"], **tags,
    }).info.run_id
    store.client.log_param(run_id, "model.name", model)
    store.client.log_param(run_id, "seed", "0")
    for step, metrics in enumerate(epochs, start=1):
        for key, value in metrics.items():
            store.client.log_metric(run_id, key, value, step=step)
    for key, value in final.items():
        store.client.log_metric(run_id, key, value)
    store.client.set_terminated(run_id, status)


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Store:
    """A grid sweep of 2 models x 2 seeds (1 epoch, 200 digits) and three more children of its parent run, as
    imgexp records them: a job that failed after its first epoch (vgg_style), a run a pruner stopped
    (mobilenet_v1), and a 3-epoch run that logged no test metrics (resnet18, best epoch 2)."""
    root = tmp_path_factory.mktemp("store")
    swept = run_cli(*SWEEP, cwd=root)
    assert swept.returncode == 0, swept.stderr[-3000:]
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(uri)
    (parent,) = client.search_runs([client.get_experiment_by_name("imgexp").experiment_id],
                                   "tags.`imgexp.role` = 'sweep'")
    store = Store(root, uri, client, parent.info.run_id)
    add_child(store, "vgg_style", {"imgexp.error": ERROR}, [{"train/acc": 0.1, "val/acc": 0.1}], {}, "FAILED")
    add_child(store, "mobilenet_v1", {"imgexp.status": "pruned"}, [{"train/acc": 0.5, "val/acc": 0.4}], {})
    add_child(store, "resnet18", {}, [
        {"train/acc": 0.3, "train/loss": 2.0, "val/acc": 0.5, "val/loss": 1.5},
        {"train/acc": 0.6, "train/loss": 1.0, "val/acc": 0.7, "val/loss": 0.9},
        {"train/acc": 0.9, "train/loss": 0.5, "val/acc": 0.6, "val/loss": 1.1},
    ], {"val/best_epoch": 2.0})
    return store


def run_compare(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "HYDRA_FULL_ERROR")}
    return subprocess.run([sys.executable, "-m", "imgexp.compare", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


@pytest.fixture(scope="module")
def cli(store):
    """``python -m imgexp.compare sweep=latest`` in the sweep's directory: its result and output dir."""
    done = run_compare("sweep=latest", cwd=store.root)
    assert done.returncode == 0, done.stderr[-3000:]
    (out,) = (store.root / "compare").glob("*/*")
    return done, out


def settings(*overrides: str):
    """The validated CompareConfig that ``python -m imgexp.compare <overrides>`` would run."""
    with initialize_config_module(config_module="imgexp.conf", version_base=None):
        return OmegaConf.to_object(compose(config_name="compare", overrides=list(overrides)))


def expected(store: Store, model: str, metric: str) -> tuple[float, float, int]:
    """Mean, std and count over the model's sweep runs, each value read back at the run's best epoch."""
    values = []
    for run_id in store.sweep_runs(model):
        run = store.client.get_run(run_id)
        if metric.startswith("test/"):
            values.append(run.data.metrics[metric])
        else:
            best = run.data.metrics["val/best_epoch"]
            (value,) = [m.value for m in store.client.get_metric_history(run_id, metric) if m.step == best]
            values.append(value)
    return statistics.mean(values), statistics.stdev(values), len(values)


def cells(out: Path) -> pd.DataFrame:
    return pd.read_csv(out / "table.csv", keep_default_na=False, na_values=[""]).set_index(["metric", "column"])


@pytest.mark.slow
def test_cli_table_matches_mlflow(store, cli):
    done, out = cli
    table = cells(out)
    assert re.search(r"\| model +\| small_cnn +\| lenet +\| vgg_style +\| mobilenet_v1 +\| resnet18 +\|", done.stdout)
    for model in ("small_cnn", "lenet"):
        assert len(store.sweep_runs(model)) == 2
        for metric in REPORT_B:
            mean, std, n = expected(store, model, metric)
            cell = table.loc[(metric, model)]
            assert (cell["mean"], cell["std"], cell["n"]) == (pytest.approx(mean), pytest.approx(std), n)
            low, high = (mean + t * std / math.sqrt(n) for t in stats.t.interval(0.95, n - 1))  # scipy's t
            if fraction(metric):  # an accuracy's or F1's interval is cut at 0 and 1
                low, high = max(low, 0.0), min(high, 1.0)
            assert f"{mean:.4f} ± {std:.4f} (n=2; CI {low:.4f}–{high:.4f})" in done.stdout
    assert (out / "table.md").read_text() in done.stdout
    assert f"| {REPORT_B['test/acc']} " in done.stdout  # rows carry report B's labels


@pytest.mark.slow
def test_missing_cells_say_why(cli):
    done, out = cli
    table = cells(out)
    for metric in REPORT_B:
        assert table.loc[(metric, "vgg_style"), "n"] == 0
        assert table.loc[(metric, "vgg_style"), "missing"] == f"failed: {ERROR}"
        assert table.loc[(metric, "mobilenet_v1"), "missing"] == "pruned"
    for metric in ("test/loss", "test/acc", "test/top2", "test/f1_macro"):
        assert table.loc[(metric, "resnet18"), "missing"] == "not logged"
    best = table.loc[("train/acc", "resnet18")]  # at val/best_epoch = 2, not the last epoch
    assert (best["mean"], best["n"]) == (pytest.approx(0.6), 1) and math.isnan(best["std"])
    assert f"failed: {ERROR}" in done.stdout and "| pruned " in done.stdout and "| not logged " in done.stdout


@pytest.mark.slow
def test_outputs_written_and_logged_to_parent(store, cli):
    _, out = cli
    assert all((out / name).stat().st_size > 0 for name in FILES)
    logged = {item.path: item.file_size for item in store.client.list_artifacts(store.parent_id, "compare")}
    assert logged == {f"compare/{name}": (out / name).stat().st_size for name in FILES}
    latex = (out / "table.tex").read_text()
    assert r"\begin{tabular}" in latex and r"small\_cnn" in latex and r"$\pm$" in latex


@pytest.mark.slow
def test_last_epoch_and_column_combination(store, tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store.uri)  # the default store; restored afterwards
    before = store.client.list_artifacts(store.parent_id)
    compare(settings("experiment=imgexp", "columns=[model,seed]", "epoch=last", "metrics=[train/acc,test/acc]"),
            tmp_path)
    table = cells(tmp_path)
    for model in ("small_cnn", "lenet"):
        for run_id in store.sweep_runs(model):
            run = store.client.get_run(run_id)
            cell = table.loc[("train/acc", f"model={model}, seed={run.data.params['seed']}")]
            assert (cell["mean"], cell["n"]) == (pytest.approx(run.data.metrics["train/acc"]), 1)
    assert table.loc[("train/acc", "model=resnet18, seed=0"), "mean"] == pytest.approx(0.9)  # the last epoch
    assert set(table.index.get_level_values("column")) == {
        f"model={m}, seed={s}" for m in ("small_cnn", "lenet") for s in (0, 1)
    } | {"model=vgg_style, seed=0", "model=mobilenet_v1, seed=0", "model=resnet18, seed=0"}  # no parent run
    assert store.client.list_artifacts(store.parent_id) == before  # not a sweep selection: nothing logged


@pytest.mark.slow
def test_select_by_tags_and_filter(store, tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store.uri)
    compare(settings("tags={imgexp.model: lenet}", "filter=\"params.seed = '1'\"", "metrics=[test/acc]"), tmp_path)
    (run_id,) = [r for r in store.sweep_runs("lenet") if store.client.get_run(r).data.params["seed"] == "1"]
    (cell,) = cells(tmp_path).itertuples()
    assert (cell.Index, cell.mean, cell.n) == (("test/acc", "lenet"),
                                               pytest.approx(store.client.get_run(run_id).data.metrics["test/acc"]), 1)


@pytest.mark.parametrize("overrides,error,message", [
    (["filter=\"params.seed = '99'\""], LookupError, "no runs match filter: params.seed = '99'"),
    (["metrics=[test/acc,test/nope]"], ConfigError, "metrics: 'test/nope' not logged by any selected run"),
    (["sweep=nope"], ConfigError, "sweep: no run id or imgexp.sweep_id 'nope'"),
    (["columns=nope"], ConfigError, "columns: 'nope' is not a config key"),
])
@pytest.mark.slow
def test_bad_selection_raises(store, tmp_path, monkeypatch, overrides, error, message):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store.uri)
    with pytest.raises(error, match=re.escape(message)):
        compare(settings(*overrides), tmp_path)


@pytest.mark.slow
def test_bad_input_is_one_line_and_exit_1(store):
    done = run_compare("experiment=nope", cwd=store.root)
    assert done.returncode == 1
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith("imgexp: error: experiment: no experiment 'nope' (available: ") and "imgexp" in line[55:]


def test_compare_yaml_documents_itself():
    header = (CONF / "compare.yaml").read_text().split("defaults:")[0]
    assert header.startswith("# ") and "python -m imgexp.compare" in header


@pytest.mark.slow
@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium package (/usr/bin/chromium)")
def test_html_report_opens_in_chromium(cli, tmp_path):
    _, out = cli
    page = (out / "report.html").read_text()
    sources = re.findall(r'src="([^"]*)"', page)
    assert sources and all(s.startswith("data:image/png;base64,") for s in sources)  # self-contained
    assert "<script" not in page and "<link" not in page
    assert page.count("<figcaption>plots/learning_curves.png</figcaption>") == 4  # each trained run's plots
    broken = tmp_path / "broken.html"  # a page with a console error and a missing image: both must be seen
    broken.write_text('<!DOCTYPE html><meta charset="utf-8"><script>console.error("on purpose")</script>'
                      '<img src="missing.png">')
    browser = Chromium(tmp_path / "profile")
    try:
        assert browser.open((out / "report.html").as_uri()) == []
        assert browser.evaluate("document.querySelectorAll('#compare tbody tr').length") == len(REPORT_B)
        assert browser.evaluate("[...document.querySelectorAll('#compare thead th')].map(th => th.textContent)") == [
            "model", "small_cnn", "lenet", "vgg_style", "mobilenet_v1", "resnet18"]
        assert browser.evaluate("[...document.images].every(img => img.complete && img.naturalWidth > 0)")
        browser.screenshot(tmp_path / "report.png")
        errors = browser.open(broken.as_uri())
        assert any("on purpose" in e for e in errors) and any("missing.png" in e for e in errors), errors
    finally:
        browser.close()
    assert (tmp_path / "report.png").stat().st_size > 10_000


def setting_store(root: Path) -> str:
    """Runs made with MlflowClient as imgexp logs them: epochs x batch, two seeds each, and the
    tracking keys varying (they cannot change a result)."""
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment = client.create_experiment("settings")
    for epochs in (1, 2):
        for batch in (32, 64):
            for seed in (0, 1):
                run_id = client.create_run(experiment).info.run_id
                params = {"model.name": "small_cnn", "epochs": epochs, "batch": batch, "seed": seed,
                          "tracking.run_name": f"r{seed}", "optimizer._target_": "torch.optim.Adam"}
                for key, value in params.items():
                    client.log_param(run_id, key, str(value))
                client.log_metric(run_id, "test/acc", epochs / 10 + batch / 1000 + seed / 100)
                client.set_terminated(run_id, "FINISHED")
    return uri


@pytest.fixture(scope="module")
def settings_uri(tmp_path_factory) -> str:
    return setting_store(tmp_path_factory.mktemp("settings"))


@pytest.mark.parametrize("overrides,message", [
    (["experiment=nope"], "experiment: no experiment 'nope' (available: "),
    (["sweep=latest"], "sweep: no sweep parent run (tag imgexp.role=sweep)"),
    (["experiment=settings", "columns=[nope]"], "columns: 'nope' is not a config key of the selected runs"),
])
def test_a_selection_that_finds_nothing_names_its_key(tmp_path, settings_uri, overrides, message):
    with pytest.raises(ConfigError) as err:
        compare(settings(f"tracking_uri={settings_uri}", *overrides), tmp_path)
    assert f"{err.value.key}: {err.value.reason}".startswith(message)
    if overrides == ["experiment=nope"]:
        assert "settings" in err.value.reason  # the experiments there are


@pytest.mark.parametrize("columns,split", [(None, []), ("model", ["batch", "epochs"]), ("batch", ["epochs"])])
def test_a_cell_never_pools_different_settings(tmp_path, settings_uri, columns, split):
    uri = settings_uri
    overrides = [f"tracking_uri={uri}", "experiment=settings", "metrics=[test/acc]", "digits=3"]
    cfg = settings(*overrides, *([f"columns={columns}"] if columns else []))
    markdown = compare(cfg, tmp_path / "out")
    numbers = pd.read_csv(tmp_path / "out" / "table.csv")
    assert len(numbers) == 4 and set(numbers.n) == {2}  # 4 settings, each pooling its two seeds only
    for row in numbers.itertuples():
        assert row.mean == pytest.approx((row.epochs / 10 + row.batch / 1000) + 0.005)
    assert sorted(c for c in numbers.columns if c in ("model", "batch", "epochs")) == sorted(
        ([columns] if columns else []) + (split or ["batch", "epochs"]))
    if split:
        assert f"also split by {', '.join(split)}, which differ between runs" in markdown
    else:
        assert "also split by" not in markdown
    assert "differing only in the seed" in markdown


def model_store(root: Path, columns: dict[str, list[tuple[int | None, float]]]) -> str:
    """One FINISHED run per (model, seed, test/acc) in ``columns``, made with MlflowClient (seed None: no
    seed param)."""
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment = client.create_experiment("stats")
    for model, runs in columns.items():
        for seed, value in runs:
            run_id = client.create_run(experiment).info.run_id
            client.log_param(run_id, "model.name", model)
            if seed is not None:
                client.log_param(run_id, "seed", str(seed))
            client.log_metric(run_id, "test/acc", value)
            client.set_terminated(run_id, "FINISHED")
    return uri


def compare_stats(tmp_path: Path, columns: dict, *overrides: str) -> tuple[pd.DataFrame, str]:
    uri = model_store(tmp_path, columns)
    cfg = settings(f"tracking_uri={uri}", "experiment=stats", "metrics=[test/acc]", *overrides)
    markdown = compare(cfg, tmp_path / "out")
    return pd.read_csv(tmp_path / "out" / "table.csv").set_index("column"), markdown


def test_statistics_match_scipy_on_the_logged_values(tmp_path):
    import numpy as np

    a = [(s, 0.80 + 0.01 * s) for s in range(5)]
    b = [(s, 0.83 + 0.013 * s - 0.004 * (s % 2)) for s in range(5)]
    c = [(s, 0.81 + 0.02 * s) for s in range(10, 14)]  # other seeds: unpaired
    table, markdown = compare_stats(tmp_path, {"a": a, "b": b, "c": c}, "baseline=a")
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.get_experiment_by_name("stats").experiment_id
    logged = {m: {int(r.data.params["seed"]): r.data.metrics["test/acc"]
                  for r in client.search_runs([exp], f"params.`model.name` = '{m}'")} for m in "abc"}
    for m in "abc":
        v = np.array(list(logged[m].values()))
        low, high = stats.t.interval(0.95, len(v) - 1, loc=v.mean(), scale=stats.sem(v))
        assert (table.loc[m, "mean"], table.loc[m, "n"]) == (pytest.approx(v.mean()), len(v))
        assert (table.loc[m, "ci_low"], table.loc[m, "ci_high"]) == (pytest.approx(max(low, 0)),
                                                                      pytest.approx(min(high, 1)))  # an accuracy
    d = np.array([logged["b"][s] - logged["a"][s] for s in range(5)])
    paired = stats.ttest_rel([logged["b"][s] for s in range(5)], [logged["a"][s] for s in range(5)]).pvalue
    exact = stats.permutation_test((d,), np.mean, permutation_type="samples", n_resamples=np.inf).pvalue
    welch = stats.ttest_ind(list(logged["c"].values()), list(logged["a"].values()), equal_var=False)
    assert table.loc["b", "diff"] == pytest.approx(d.mean()) and table.loc["b", "p"] == pytest.approx(paired)
    assert (table.loc["b", "p_perm"], table.loc["b", "p_min"]) == (pytest.approx(exact), 2 / 2 ** 5)
    assert table.loc["b", "test"] == "paired t-test" and table.loc["c", "test"] == "Welch t-test"
    assert table.loc["c", "p"] == pytest.approx(welch.pvalue) and math.isnan(table.loc["c", "p_perm"])
    assert (table.loc["c", "diff_low"], table.loc["c", "diff_high"]) == tuple(
        pytest.approx(x) for x in welch.confidence_interval(0.95))
    low, high = sorted([paired, welch.pvalue])  # Holm over the two columns: 2 * smallest, then the larger
    holm = {low: min(1, 2 * low), high: min(1, max(2 * low, high))}
    assert (table.loc["b", "p_holm"], table.loc["c", "p_holm"]) == (pytest.approx(holm[paired]),
                                                                    pytest.approx(holm[welch.pvalue]))
    assert math.isnan(table.loc["a", "p"]) and "; baseline" in markdown and "Holm-corrected" in markdown
    row = next(line for line in markdown.splitlines() if line.startswith("| top-1 acc"))
    for cell, column in zip(row.split("|")[3:5], "bc"):  # p= ends in * exactly when it holds after Holm
        mark = re.search(r" p=[-+.\de]+(\*?)", cell).group(1)
        assert (mark == "*") == (table.loc[column, "p_holm"] < 0.05), cell
    assert "(perm p=0.0625)" in row.split("|")[3] and "perm p" not in row.split("|")[4]  # paired b, unpaired c


def test_known_answers_identical_columns_a_fixed_shift_and_too_few_runs(tmp_path):
    noise = [0.0, 0.03, -0.02, 0.01, 0.04, -0.01, 0.02, -0.03]  # 8 pairs: the exact p can reach 2/256
    base = [(s, 0.7 + n) for s, n in enumerate(noise)]
    same = list(base)
    shifted = [(s, v + 0.05 + 0.002 * (-1) ** s) for s, v in base]
    few = [(0, 0.9), (1, 0.91)]
    table, markdown = compare_stats(tmp_path, {"base": base, "same": same, "shifted": shifted, "few": few},
                                    "baseline=base", "digits=3")
    assert table.loc["same", "p"] == 1.0 and table.loc["same", "diff"] == 0.0  # the sign-flip p: no t statistic
    assert table.loc["same", "test"] == "paired sign-flip permutation (t-test undefined: all differences equal)"
    assert table.loc["shifted", "diff_low"] < 0.05 < table.loc["shifted", "diff_high"]
    assert table.loc["shifted", "p_holm"] < 0.05 and "p=" in markdown and "*" in markdown
    assert table.loc["few", "test"] == "too few runs" and math.isnan(table.loc["few", "p"])
    assert "too few runs" in markdown
    cfg = settings(f"tracking_uri=sqlite:///{tmp_path / 'mlflow.db'}", "experiment=stats", "metrics=[test/acc]",
                   "baseline=best")
    assert "difference to few with" in compare(cfg, tmp_path / "best"), "the best mean of the first metric"


def three_seeds(tmp_path: Path, *overrides: str) -> tuple[pd.DataFrame, str]:
    """small_cnn (0.96) vs lenet (0.48) over 3 paired seeds with small noise, as on digits; baseline small_cnn."""
    columns = {"small_cnn": [(0, 0.962), (1, 0.951), (2, 0.975)], "lenet": [(0, 0.47), (1, 0.52), (2, 0.44)]}
    return compare_stats(tmp_path, columns, "baseline=small_cnn", *overrides)


def lenet_cell(markdown: str) -> str:
    return next(line for line in markdown.splitlines() if line.startswith("| top-1 acc")).split("|")[3]


def test_three_paired_seeds_mark_a_large_difference(tmp_path):
    import numpy as np

    table, markdown = three_seeds(tmp_path)
    base, other = np.array([0.962, 0.951, 0.975]), np.array([0.47, 0.52, 0.44])
    lenet = table.loc["lenet"]
    assert (lenet.test, lenet.p) == ("paired t-test", pytest.approx(stats.ttest_rel(other, base).pvalue))
    assert lenet.p_holm < 0.05 and lenet.p_perm == pytest.approx(0.25) and lenet.p_min == 0.25
    exact = stats.permutation_test((other - base,), np.mean, permutation_type="samples", n_resamples=np.inf)
    assert lenet.p_perm == pytest.approx(exact.pvalue)
    assert re.search(r"p=0\.0\d+\* \(perm p=0\.25\)", lenet_cell(markdown)), lenet_cell(markdown)
    assert "paired t-test, which assumes the differences are roughly normal" in markdown
    assert "under 10 pairs the sign-flip p cannot go below 2/2^n: 3 pairs 0.25" in markdown
    for name in ("table.tex", "report.html"):  # every output carries the caption
        assert "roughly normal" in (tmp_path / "out" / name).read_text()
    latex = (tmp_path / "out" / "table.tex").read_text()
    assert r"difference to small\_cnn" in latex and r"cannot go below 2/$2^n$: 3 pairs 0.25" in latex


def test_permutation_and_welch_on_request(tmp_path):
    table, markdown = three_seeds(tmp_path / "perm", "test=permutation")
    lenet = table.loc["lenet"]
    assert (lenet.test, lenet.p, lenet.p_perm) == ("paired sign-flip permutation", 0.25, 0.25)
    assert "*" not in lenet_cell(markdown) and "perm p" not in lenet_cell(markdown)
    assert "3 pairs 0.25" in markdown
    table, markdown = three_seeds(tmp_path / "welch", "test=welch")
    welch = stats.ttest_ind([0.47, 0.52, 0.44], [0.962, 0.951, 0.975], equal_var=False)
    lenet = table.loc["lenet"]
    assert (lenet.test, lenet.p, lenet.p_perm) == ("Welch t-test", pytest.approx(welch.pvalue), 0.25)
    assert (lenet.diff_low, lenet.diff_high) == tuple(pytest.approx(x) for x in welch.confidence_interval(0.95))
    assert "over matching seeds: Welch's t-test, as if unpaired" in markdown


def test_reruns_of_a_seed_are_merged_and_runs_without_a_seed_are_not(tmp_path):
    import numpy as np

    columns = {"base": [(0, 0.80), (1, 0.82), (1, 0.84), (2, 0.81)],  # seed 1 run twice
               "rerun": [(0, 0.90)] * 4,  # reuse=false four times: one sample, not n=4 with std 0
               "paired": [(0, 0.85), (1, 0.86), (2, 0.88)],
               "unseeded": [(None, 0.70), (None, 0.71), (None, 0.73)]}
    table, markdown = compare_stats(tmp_path, columns, "baseline=base")
    base = np.array([0.80, 0.83, 0.81])  # seed 1's mean
    assert (table.loc["base", "n"], table.loc["base", "repeats"]) == (3, 1)
    assert (table.loc["base", "mean"], table.loc["base", "std"]) == (pytest.approx(base.mean()),
                                                                     pytest.approx(base.std(ddof=1)))
    assert (table.loc["rerun", "n"], table.loc["rerun", "repeats"]) == (1, 3) and math.isnan(table.loc["rerun", "std"])
    assert table.loc["rerun", "test"] == "too few runs"
    paired = stats.ttest_rel([0.85, 0.86, 0.88], base).pvalue  # seeds pair up once seed 1 is one value
    assert (table.loc["paired", "test"], table.loc["paired", "p"]) == ("paired t-test", pytest.approx(paired))
    assert (table.loc["unseeded", "n"], table.loc["unseeded", "repeats"]) == (3, 0)
    assert table.loc["unseeded", "test"] == "Welch t-test"
    assert "0.9000 (n=1, 3 repeats merged)" in markdown and "(n=3, 1 repeat merged;" in markdown
    assert "; 4 repeats merged into the values of their seeds" in markdown and "n: distinct seeds" in markdown
    notes = markdown.split("Repeats merged:")[1]
    assert re.search(r"- rerun: seed 0 ran 4 times \(\w+(, \w+){3}\), 3 repeats merged", notes)
    assert re.search(r"- base: seed 1 ran 2 times \(\w+, \w+\), 1 repeat merged", notes)


def test_a_bad_test_is_one_line(tmp_path):
    with pytest.raises(ConfigError, match=re.escape("test: must be one of t, permutation, welch, got 'z'")):
        settings("test=z")
    done = run_compare("test=z", cwd=tmp_path)
    assert (done.returncode, done.stderr.strip().splitlines()) == (
        1, ["imgexp: error: test: must be one of t, permutation, welch, got 'z'"])



def add_sweep(client: MlflowClient, experiment: str, root: Path, sweeper: str, plots: tuple[str, ...]) -> str:
    """A sweep parent run (``imgexp.sweeper=<sweeper>``, sweep id ``<sweeper>-sweep``) with two finished
    children, made with MlflowClient, and a small PNG at each of ``plots`` on the parent: its sweep id."""
    from PIL import Image

    sweep_id = f"{sweeper}-sweep"
    parent = client.create_run(experiment, tags={"imgexp.role": "sweep", "imgexp.sweeper": sweeper,
                                                 "imgexp.sweep_id": sweep_id}).info.run_id
    for seed in (0, 1):
        run_id = client.create_run(experiment, tags={"mlflow.parentRunId": parent, "imgexp.sweep_id": sweep_id}
                                   ).info.run_id
        client.log_param(run_id, "model.name", "small_cnn")
        client.log_param(run_id, "seed", str(seed))
        client.log_metric(run_id, "test/acc", 0.9 + seed / 100)
        client.set_terminated(run_id, "FINISHED")
    for path in plots:
        local = root / sweeper / path
        local.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (40, 30), "steelblue").save(local)
        client.log_artifact(parent, str(local), str(Path(path).parent))
    client.set_terminated(parent, "FINISHED")
    return sweep_id


STUDY_PLOTS = ("optuna/param_importances.png", "optuna/optimization_history.png")


@pytest.fixture(scope="module")
def sweeps_uri(tmp_path_factory) -> str:
    """A store holding an Optuna sweep whose parent carries ``STUDY_PLOTS`` and a grid sweep with none."""
    root = tmp_path_factory.mktemp("sweeps")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment = client.create_experiment("study", artifact_location=(root / "artifacts").as_uri())
    add_sweep(client, experiment, root, "optuna", STUDY_PLOTS)
    add_sweep(client, experiment, root, "grid", ())
    return uri


@pytest.mark.parametrize("sweeper", ["optuna", "grid"])
def test_report_shows_a_studys_optuna_plots(tmp_path, sweeps_uri, sweeper):
    out = tmp_path / "out"
    compare(settings(f"tracking_uri={sweeps_uri}", "experiment=study", f"sweep={sweeper}-sweep",
                     "metrics=[test/acc]"), out)
    page = (out / "report.html").read_text()
    if sweeper == "grid":  # no plots on the parent: no section, nothing downloaded
        assert "Optuna study" not in page and not (out / "optuna").exists()
        return
    assert sorted(p.relative_to(out).as_posix() for p in out.glob("optuna/*")) == sorted(STUDY_PLOTS)
    study = page.split("<h2>Optuna study</h2>")[1].split("<h2>")[0]
    assert re.findall(r'<a href="([^"]+)">', study) == ["optuna/optimization_history.png",
                                                        "optuna/param_importances.png"]  # Optuna's order
    assert all(s.startswith("data:image/png;base64,") for s in re.findall(r'src="([^"]*)"', study))  # inline


def test_an_accuracys_interval_stays_within_0_and_1(tmp_path):
    table, _ = compare_stats(tmp_path, {"a": [(0, 0.99), (1, 1.0), (2, 0.97)]})
    low, high = stats.t.interval(0.95, 2, loc=statistics.mean([0.99, 1.0, 0.97]),
                                 scale=stats.sem([0.99, 1.0, 0.97]))
    assert high > 1 and (table.loc["a", "ci_low"], table.loc["a", "ci_high"]) == (pytest.approx(low), 1.0)


def test_evaluations_and_the_analysis_choice_make_no_column(tmp_path):
    """Two seeds of one training config, one drawn with analysis=default and one with analysis=none, and an
    imgexp.evaluate run of the first (data.channels 1, as evaluate records it, the runs' None): one column of 2
    runs; the evaluation counts when asked."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment = client.create_experiment("evaluated")
    runs = [({"seed": "0", "analysis.name": "default", "analysis.points": "1000", "data.channels": "None"}, {}, 0.90),
            ({"seed": "1", "analysis.name": "none", "analysis.points": "0", "data.channels": "None"}, {}, 0.92),
            ({"seed": "0", "analysis.name": "default", "analysis.points": "1000", "data.channels": "1"},
             {"imgexp.role": "evaluation"}, 0.90)]
    for params, tags, acc in runs:
        run_id = client.create_run(experiment, tags=tags).info.run_id
        for key, value in {"model.name": "small_cnn", **params}.items():
            client.log_param(run_id, key, value)
        client.log_metric(run_id, "test/acc", acc)
        client.set_terminated(run_id, "FINISHED")
    overrides = [f"tracking_uri={uri}", "experiment=evaluated", "metrics=[test/acc]"]
    compare(settings(*overrides), tmp_path / "out")
    table = pd.read_csv(tmp_path / "out" / "table.csv").set_index("column")
    assert list(table.index) == ["small_cnn"] and table.loc["small_cnn", "n"] == 2
    compare(settings(*overrides, "evaluations=true"), tmp_path / "with")
    table = pd.read_csv(tmp_path / "with" / "table.csv")
    assert table.n.sum() == 3 and len(table) == 2  # the evaluation's data.channels sets it apart


def test_latest_sweep_with_a_baseline_is_the_latest_that_has_it(tmp_path):
    """The README's order: a grid over models, then an Optuna study over the learning rate. ``sweep=latest
    baseline=small_cnn`` compares the grid (the study has no small_cnn column); without a baseline, the study."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment = client.create_experiment("readme")
    children = {"grid": [("small_cnn", "0.001", s) for s in "01"] + [("lenet", "0.001", s) for s in "01"],
                "optuna": [("small_cnn", lr, "0") for lr in ("0.01", "0.0001")]}
    for sweep, runs in children.items():
        parent = client.create_run(experiment, tags={"imgexp.role": "sweep", "imgexp.sweep_id": sweep}).info.run_id
        client.set_terminated(parent, "FINISHED")
        for model, lr, seed in runs:
            run_id = client.create_run(experiment, tags={"mlflow.parentRunId": parent,
                                                         "imgexp.sweep_id": sweep}).info.run_id
            for key, value in {"model.name": model, "optimizer.lr": lr, "seed": seed}.items():
                client.log_param(run_id, key, value)
            client.log_metric(run_id, "test/acc", 0.9 if model == "small_cnn" else 0.5)
            client.set_terminated(run_id, "FINISHED")
        time.sleep(0.01)  # the study starts after the grid
    markdown = compare(settings(f"tracking_uri={uri}", "sweep=latest", "baseline=small_cnn", "metrics=[test/acc]"),
                       tmp_path / "out")
    assert "; baseline" in markdown
    assert list(pd.read_csv(tmp_path / "out" / "table.csv").column) == ["small_cnn", "lenet"]
    compare(settings(f"tracking_uri={uri}", "sweep=latest", "metrics=[test/acc]"), tmp_path / "study")
    assert sorted(pd.read_csv(tmp_path / "study" / "table.csv").column.astype(str)) == ["0.0001", "0.01"]
    with pytest.raises(ConfigError, match="baseline: no sweep has a column 'resnet18'"):
        compare(settings(f"tracking_uri={uri}", "sweep=latest", "baseline=resnet18"), tmp_path / "none")
