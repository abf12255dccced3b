"""Tracking, middle layer (uses store.py): sweeps never train the same thing twice. A sweep job whose config hash (and code version, unless
``reuse=any``) matches a FINISHED run of the same experiment is not trained: it is recorded as a child run
of its sweep that holds the original's params and metric histories, tagged ``imgexp.reused_from`` with the
original's id. The comparison stage counts the two once. Failed, pruned and killed runs are never reused
(a killed one is resumed instead, see ``imgexp.start``)."""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Optional

from imgexp.tracking.store import (CODE_VERSION_TAG, CONFIG_HASH_TAG, REUSED_FROM_TAG, STATUS_TAG, code_version,
                                   experiment_id, open_store, parent_tags, tracking_uri)

if TYPE_CHECKING:
    from mlflow.entities import Run

log = logging.getLogger(__name__)
BATCH = 1000  # MLflow's limit of metrics per log_batch call (params: 100)


def finished_run(client, experiment: str, digest: str, mode: str, metrics: list[str]) -> Optional[Run]:
    """The oldest FINISHED, unpruned, trained (not itself a record) run with config hash ``digest`` that
    logged ``metrics`` and, unless ``mode`` is ``any``, ran this code version."""
    runs = client.search_runs([experiment], f"tags.`{CONFIG_HASH_TAG}` = '{digest}' and "
                                            "attributes.status = 'FINISHED'", order_by=["attributes.start_time ASC"])
    for run in runs:
        tags = run.data.tags
        if STATUS_TAG in tags or REUSED_FROM_TAG in tags or any(m not in run.data.metrics for m in metrics):
            continue
        if mode == "any" or tags.get(CODE_VERSION_TAG) == code_version():
            return run
    return None


def record(client, original: Run, experiment: str, run_name: str, tags: dict[str, str],
           parent_run_id: Optional[str]) -> Run:
    """A FINISHED run standing for ``original`` in a new sweep: its params, every metric's history, ``tags``
    and a note linking to it in the MLflow UI."""
    from mlflow.entities import Metric, Param

    source = original.info.run_id
    tags = {**tags, **parent_tags(client, parent_run_id), REUSED_FROM_TAG: source,
            CODE_VERSION_TAG: original.data.tags.get(CODE_VERSION_TAG, "unknown"),
            "mlflow.note.content": f"Not trained again: run {source} finished with the same config. This run "
                                   "repeats its params and metrics; its artifacts are in that run."}
    run_id = client.create_run(experiment, run_name=run_name, tags=tags).info.run_id
    params = [Param(k, v) for k, v in original.data.params.items()]
    metrics = [Metric(m.key, m.value, m.timestamp, m.step) for key in original.data.metrics
               for m in client.get_metric_history(source, key)]
    for i in range(0, len(params), 100):
        client.log_batch(run_id, params=params[i:i + 100])
    for i in range(0, len(metrics), BATCH):
        client.log_batch(run_id, metrics=metrics[i:i + BATCH])
    client.set_terminated(run_id, "FINISHED")
    return client.get_run(run_id)


def reuse_finished(tracking, digest: str, mode: str, metrics: list[str], run_name: str,
                   tags: dict[str, str]) -> Optional[Run]:
    """The record, in the job's sweep, of a FINISHED run with config hash ``digest`` that logged ``metrics``
    (see the module), or None when there is none to reuse."""
    client = open_store(tracking_uri(tracking.uri))
    experiment = experiment_id(client, tracking.experiment)
    original = finished_run(client, experiment, digest, mode, metrics)
    if original is None:
        return None
    reused = record(client, original, experiment, run_name, tags, tracking.parent_run_id)
    log.info("not trained again: run %s finished with the same config (hash %s) on %s; recorded as run %s",
             original.info.run_id, digest, original.data.tags.get(CODE_VERSION_TAG, "an unknown code version"),
             reused.info.run_id)
    return reused


def count_reused(client, experiment: str, parent_run_id: str) -> int:
    """How many children of sweep parent ``parent_run_id`` are records of reused runs."""
    return len(client.search_runs([experiment], f"tags.`mlflow.parentRunId` = '{parent_run_id}' and "
                                                f"tags.`{REUSED_FROM_TAG}` LIKE '%'", max_results=50000))
