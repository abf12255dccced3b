"""What MLflow's system metrics cost a training run, as imgexp samples them (imgexp.tracking.system_metrics):
every SAMPLING_S seconds the monitor thread reads CPU, memory, disk and network (and the GPU) and asks the store
whether the run still runs; every SAMPLES samples it logs their mean. Its share of the training process's time
is (one sample + one run look-up + a log / SAMPLES) / SAMPLING_S, whatever the epoch's length; also measured
directly: a CPU epoch of the default run (small_cnn on digits) with the monitor sampling every 0.1 s, against
none, interleaved.

    python benchmarks/system_metrics.py [--rounds 5]
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from mlflow import MlflowClient
from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

from imgexp.build import build
from imgexp.register import register
from imgexp.tracking.system_metrics import SAMPLES, SAMPLING_S


def compose(*overrides: str):
    from hydra import compose as hydra_compose, initialize_config_module

    with initialize_config_module(config_module="imgexp.conf", version_base=None):
        return hydra_compose(config_name="config", overrides=list(overrides))


def per_sample_cost(client: MlflowClient, run_id: str, uri: str, n: int = 200) -> tuple[float, float, float]:
    """Seconds for one sample, one run look-up, one logged point (medians)."""
    monitor = SystemMetricsMonitor(run_id, tracking_uri=uri)
    sample, lookup, publish = [], [], []
    for _ in range(n):
        began = time.perf_counter()
        monitor.collect_metrics()
        sample.append(time.perf_counter() - began)
        began = time.perf_counter()
        client.get_run(run_id)
        lookup.append(time.perf_counter() - began)
    for _ in range(20):
        monitor.collect_metrics()
        began = time.perf_counter()
        monitor.publish_metrics(monitor.aggregate_metrics())
        monitor.mlflow_logger.flush()  # the point written to the store
        publish.append(time.perf_counter() - began)
    return statistics.median(sample), statistics.median(lookup), statistics.median(publish)


def epoch_time(cfg, folder: Path, monitor: SystemMetricsMonitor | None) -> float:
    job = build(cfg, folder)
    if monitor is not None:
        monitor.start()
    began = time.perf_counter()
    job.trainer.train_epoch(1)
    spent = time.perf_counter() - began
    if monitor is not None:
        monitor.finish()
    return spent


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    register()
    with tempfile.TemporaryDirectory() as tmp:
        uri = f"sqlite:///{tmp}/mlflow.db"
        client = MlflowClient(uri)
        run_id = client.create_run(client.create_experiment("bench")).info.run_id
        sample, lookup, publish = per_sample_cost(client, run_id, uri)
        share = (sample + lookup + publish / SAMPLES) / SAMPLING_S
        print(f"one sample {sample * 1e3:.2f} ms, one run look-up {lookup * 1e3:.2f} ms, one logged point "
              f"{publish * 1e3:.2f} ms: at a sample every {SAMPLING_S} s and a point every {SAMPLES}, "
              f"{share * 100:.3f}% of the training process's time")
        cfg = compose("progress=false", "analysis=none", "data.subset=1000")
        timed = {"off": [], "on, every 0.1 s": []}
        for _ in range(args.rounds):
            timed["off"].append(epoch_time(cfg, Path(tmp) / "a", None))
            monitor = SystemMetricsMonitor(run_id, sampling_interval=0.1, samples_before_logging=1, tracking_uri=uri)
            timed["on, every 0.1 s"].append(epoch_time(cfg, Path(tmp) / "b", monitor))
        base = statistics.median(timed["off"])
        for name, times in timed.items():
            print(f"epoch, system metrics {name}: median {statistics.median(times):.3f} s "
                  f"({(statistics.median(times) / base - 1) * 100:+.1f}%), all {[round(t, 3) for t in times]}")


if __name__ == "__main__":
    main()
