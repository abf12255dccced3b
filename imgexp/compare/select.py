"""Runs -> DataFrame: resolve the selection (experiments, sweep, tags, filter) with ``mlflow.search_runs``,
drop sweep parent runs, and give each run its column label and, if it cannot count, the reason why."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import mlflow
import pandas as pd
from mlflow import MlflowClient
from mlflow.entities import Run
from mlflow.exceptions import MlflowException

from imgexp.compare.config import CompareConfig
from imgexp.config import UNHASHED_KEYS, ConfigError, as_list
from imgexp.tracking.store import ERROR_TAG, REUSED_FROM_TAG, ROLE_TAG, STATUS_TAG, SWEEP_ID_TAG, tracking_uri


NOT_RESULTS = ("analysis",)  # config keys that change a run's plots, not its metrics


@dataclass
class Selection:
    """The selected runs, oldest first: MLflow's columns plus ``column`` (label), one column per key
    (``key:<k>``) and ``excluded`` (why the run does not count, or None); the sweep's parent run if any."""

    runs: pd.DataFrame
    keys: list[str]
    parent: Optional[Run]
    client: MlflowClient
    uri: str
    description: str
    split: list[str] = field(default_factory=list)  # keys added to the asked columns: they varied within one
    _histories: dict = field(default_factory=dict, repr=False)

    @property
    def columns(self) -> list[str]:
        return list(dict.fromkeys(self.runs["column"]))

    @property
    def counted(self) -> pd.DataFrame:
        return self.runs[self.runs["excluded"].isna()]

    def history(self, run_id: str, metric: str) -> list[tuple[int, float]]:
        """``(step, value)`` of every logged value, by step then time (fetched once per run and metric)."""
        if (run_id, metric) not in self._histories:
            points = sorted(self.client.get_metric_history(run_id, metric), key=lambda m: (m.step, m.timestamp))
            self._histories[run_id, metric] = [(m.step, m.value) for m in points]
        return self._histories[run_id, metric]


def quoted(value: str) -> str:
    return "'" + str(value).replace("'", "\\'") + "'"


def experiment_ids(client: MlflowClient, names: list[str]) -> list[str]:
    ids = []
    for name in names:
        exp = client.get_experiment_by_name(name)
        if exp is None:
            known = ", ".join(e.name for e in client.search_experiments())
            raise ConfigError("experiment", f"no experiment {name!r} (available: {known or 'none'})")
        ids.append(exp.experiment_id)
    return ids


def search(ids: list[str], filter_string: str = "", **kwargs) -> pd.DataFrame:
    return mlflow.search_runs(experiment_ids=ids or None, search_all_experiments=not ids,
                              filter_string=filter_string, **kwargs)


def find_parents(client: MlflowClient, ids: list[str], sweep: str, every: bool = False) -> list[Run]:
    """The parent run of ``sweep`` (a run id or an imgexp.sweep_id, or ``latest``: the newest); with ``every``,
    for ``latest``, every sweep's, newest first."""
    parents = f"tags.`{ROLE_TAG}` = 'sweep'"
    if sweep != "latest":
        try:
            return [client.get_run(sweep)]
        except MlflowException:
            parents += f" and tags.`{SWEEP_ID_TAG}` = {quoted(sweep)}"
    found = search(ids, parents, order_by=["attributes.start_time DESC"], max_results=1000 if every else 1)
    if found.empty:
        what = f"no sweep parent run (tag {ROLE_TAG}=sweep)" if sweep == "latest" else \
            f"no run id or {SWEEP_ID_TAG} {sweep!r}"
        raise ConfigError("sweep", what)
    return [client.get_run(run_id) for run_id in found.run_id]


def key_values(runs: pd.DataFrame, key: str) -> pd.Series:
    """Each run's value of a config key: a group's ``<key>.name`` (``model`` -> ``small_cnn``), else the
    param ``<key>`` itself (``batch``, ``optimizer.lr``), else a group's ``<key>._target_`` class name
    (``loss`` -> ``CrossEntropyLoss``)."""
    for name in (f"{key}.name", key):
        if f"params.{name}" in runs:
            return runs[f"params.{name}"].fillna("(unknown)")
    if f"params.{key}._target_" in runs:
        return runs[f"params.{key}._target_"].fillna("(unknown)").map(lambda target: target.rsplit(".", 1)[-1])
    raise ConfigError("columns", f"{key!r} is not a config key of the selected runs "
                                 f"(no param {key}.name, {key} or {key}._target_)")


def excluded(run: pd.Series) -> Optional[str]:
    """Why a run does not count: failed (with its one-line error), pruned, or not finished; None if it counts."""
    if run.status == "FAILED":
        error = run.get(f"tags.{ERROR_TAG}")
        return f"failed: {error}".replace("|", "/") if isinstance(error, str) and error else "failed"
    if run.get(f"tags.{STATUS_TAG}") == "pruned":
        return "pruned"
    return None if run.status == "FINISHED" else run.status.lower()


def select(cfg: CompareConfig) -> Selection:
    """The runs ``cfg`` selects. ``sweep=latest`` with a ``baseline`` column: the latest sweep that has it."""
    uri = tracking_uri(cfg.tracking_uri)
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).exists():
        raise ConfigError("tracking_uri", f"no MLflow store at {uri} (run from the directory holding mlflow.db, "
                                          "or set tracking_uri= or $MLFLOW_TRACKING_URI)")
    mlflow.set_tracking_uri(uri)
    client = MlflowClient(uri)
    ids = experiment_ids(client, [str(e) for e in as_list(cfg.experiment)])
    if not cfg.sweep:
        return select_in(cfg, client, uri, ids, None)
    every = cfg.sweep == "latest" and cfg.baseline not in (None, "best")  # the latest sweep that has it
    parents = find_parents(client, ids, cfg.sweep, every)
    if not every:
        return select_in(cfg, client, uri, ids, parents[0])
    for parent in parents:
        try:
            selection = select_in(cfg, client, uri, ids, parent)
        except LookupError:
            continue
        if cfg.baseline in selection.columns:
            return selection
    raise ConfigError("baseline", f"no sweep has a column {cfg.baseline!r} (sweep=latest looked at "
                                  f"{len(parents)}; name one with sweep=<parent run id>)")


def select_in(cfg: CompareConfig, client: MlflowClient, uri: str, ids: list[str], parent: Optional[Run]) -> Selection:
    """The runs ``cfg`` selects among ``parent``'s children (any run, without one)."""
    filters = [cfg.filter] if cfg.filter else []
    tags = cfg.tags or {}
    filters += [f"tags.`{k}` = {quoted(v)}" for k, v in tags.items()]
    if parent is not None:
        filters.append(f"tags.`mlflow.parentRunId` = {quoted(parent.info.run_id)}")
    described = [f"experiment={','.join(as_list(cfg.experiment))}"] if cfg.experiment else []
    if parent is not None:
        described.append(f"sweep={parent.info.run_id} ({parent.data.tags.get(SWEEP_ID_TAG, 'no sweep id')})")
    described += [f"{k}={v}" for k, v in tags.items()] + ([f"filter: {cfg.filter}"] if cfg.filter else [])
    description = f"{', '.join(described) or 'all experiments'} in {uri}"

    runs = search(ids, " and ".join(filters), order_by=["attributes.start_time ASC"])
    if f"tags.{ROLE_TAG}" in runs:  # no sweep parents; evaluations (imgexp.evaluate's) only when asked
        left_out = ("sweep",) if cfg.evaluations or tags.get(ROLE_TAG) == "evaluation" else ("sweep", "evaluation")
        runs = runs[~runs[f"tags.{ROLE_TAG}"].isin(left_out)]
    if runs.empty:
        raise LookupError(f"no runs match {description}")
    runs = once(runs).reset_index(drop=True)
    asked = [str(k) for k in as_list(cfg.columns)]
    keys = split_keys(runs, asked)
    values = {key: key_values(runs, key).astype(str) for key in keys}
    for key, series in values.items():
        runs[f"key:{key}"] = series
    runs["column"] = labels(runs, keys)
    runs["excluded"] = runs.apply(excluded, axis=1)
    return Selection(runs, keys, parent, client, uri, description, split=keys[len(asked):] if asked else [])


def once(runs: pd.DataFrame) -> pd.DataFrame:
    """Each trained run once: a record of a reused run (``imgexp.reused_from``) is left out when the run it
    repeats, or an earlier record of it, is selected too (runs oldest first)."""
    column = f"tags.{REUSED_FROM_TAG}"
    if column not in runs:
        return runs
    trained = runs[column].where(runs[column].fillna("") != "", runs["run_id"])
    return runs[~trained.duplicated()]


def labels(runs: pd.DataFrame, keys: list[str]) -> pd.Series:
    """Each run's column label: its value of the one key, or ``k=v, ...`` for several."""
    if not keys:
        return pd.Series("all runs", index=runs.index)
    values = pd.DataFrame({key: key_values(runs, key).astype(str) for key in keys})
    return values[keys[0]] if len(keys) == 1 else values.apply(
        lambda row: ", ".join(f"{k}={v}" for k, v in row.items()), axis=1)


def settings(runs: pd.DataFrame) -> list[str]:
    """The config keys (params) whose values differ between the runs, other than the seed and the keys
    that cannot change a result (``imgexp.config.UNHASHED_KEYS``, and :data:`NOT_RESULTS`): what makes two runs
    different settings."""
    ignored = ("seed", *UNHASHED_KEYS, *NOT_RESULTS)
    params = [c.removeprefix("params.") for c in runs if c.startswith("params.")]
    return [p for p in params if not any(p == k or p.startswith(f"{k}.") for k in ignored)
            and runs[f"params.{p}"].nunique() > 1]  # a run that does not record a key does not differ in it


def split_keys(runs: pd.DataFrame, keys: list[str]) -> list[str]:
    """``keys`` (the asked columns; none: choose them), plus whatever keys it takes for no column to pool
    runs of different settings: a cell only ever pools runs that differ in the seed."""
    keys, varying = list(keys), settings(runs)
    while True:
        column = labels(runs, keys)
        mixed = sorted(p for p in varying if runs.groupby(column)[f"params.{p}"].nunique().max() > 1)
        if not mixed:
            return keys or (["model"] if "params.model.name" in runs else [])  # one setting: name its model
        groups = [p.rsplit(".", 1)[0] for p in mixed if p.endswith((".name", "._target_"))]
        keys.append(groups[0] if groups else mixed[0])  # a changed option (model=...) before its own keys
