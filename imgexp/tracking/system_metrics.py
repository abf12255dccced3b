"""Tracking, middle layer (nothing of tracking/): what each machine did during a run, as MLflow's own system
metrics (CPU, memory, disk, network, and GPU utilisation and memory where a GPU and ``nvidia-ml-py`` are), in the
run's "System metrics" tab. Sampled every :data:`SAMPLING_S` seconds and logged as the mean of
:data:`SAMPLES` samples, so a run shorter than a minute logs none; each machine of a multi-node run under its
node id (``system/node1/cpu_utilization_percentage``). MLflow's environment variables
(``MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL``, ``..._SAMPLES_BEFORE_LOGGING``) override both."""
from __future__ import annotations

import logging
from contextlib import contextmanager
from typing import Iterator, Optional

SAMPLING_S = 10
SAMPLES = 6  # one logged point a minute


@contextmanager
def system_metrics(enabled: bool, uri: str, run_id: Optional[str], node_id: Optional[str] = None,
                   resumed: bool = False) -> Iterator[None]:
    """Log this machine's system metrics into run ``run_id`` while the block runs (``resumed``: after the
    steps an earlier attempt logged)."""
    if not enabled or run_id is None:
        yield
        return
    logging.getLogger("mlflow.system_metrics").setLevel(logging.WARNING)  # its start and stop lines
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

    monitor = SystemMetricsMonitor(run_id, sampling_interval=SAMPLING_S, samples_before_logging=SAMPLES,
                                   resume_logging=resumed, node_id=node_id, tracking_uri=uri)
    monitor.start()
    try:
        yield
    finally:
        monitor.finish()
