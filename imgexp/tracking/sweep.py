"""Tracking, top layer: what imgexp's two sweepers share, a sweep's MLflow parent run, opened before the first
job and closed with a summary (:func:`finish`), the best job's analysis and registration, and how a failed job
is recorded.

Jobs find the parent through ``tracking.parent_run_id`` (an override the sweeper adds to every job), so it works
whatever launcher runs them: in-process, joblib worker processes or SLURM jobs.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Optional

from hydra.core.utils import JobReturn, JobStatus
from omegaconf import DictConfig

from imgexp.config import as_list
from imgexp.errors import describe
from imgexp.redact import mask
from imgexp.sweep_overrides import asked
from imgexp.tracking.liveness import Heartbeat, close_lost_runs, owner_tags
from imgexp.tracking.reuse import count_reused
from imgexp.tracking.store import (REGISTERED_TAG, REUSED_FROM_TAG, ROLE_TAG, STATUS_TAG, SWEEP_ID_TAG, SWEEPER_TAG,
                                   experiment_id, open_store, run_location, set_tags, source_tags, tracking_uri)

log = logging.getLogger(__name__)


class ParentRun:
    """An open parent run; a no-op when the sweep's config has ``tracking.enabled=false``."""

    def __init__(self, tracking: DictConfig, sweep_id: str, sweeper: str, arguments: list[str],
                 run_id: Optional[str] = None) -> None:
        self.run_id: Optional[str] = None
        self.heartbeat: Optional[Heartbeat] = None
        self.register = tracking.get("register")  # the registered model the best job's model becomes
        self.light = False  # the jobs ran analysis=none (light_analysis): the best job is analysed at the end
        if not tracking.enabled:
            return
        self.client = open_store(tracking_uri(tracking.uri))
        experiment = experiment_id(self.client, tracking.experiment)
        close_lost_runs(self.client, experiment)  # earlier sweeps' parents and jobs that were killed
        if run_id:  # resuming: reopen the sweep's existing parent
            self.client.update_run(run_id, status="RUNNING")
            set_tags(self.client, run_id, owner_tags())
        else:
            tags = {ROLE_TAG: "sweep", SWEEPER_TAG: sweeper, SWEEP_ID_TAG: sweep_id,
                    "imgexp.overrides": mask(" ".join(arguments)), **source_tags(), **owner_tags()}
            name = f"optuna study {sweep_id}" if sweeper == "optuna" else f"{sweeper} {' '.join(arguments) or sweep_id}"
            run_id = self.client.create_run(experiment, run_name=mask(name)[:250], tags=tags).info.run_id
        self.run_id = run_id
        self.heartbeat = Heartbeat(self.client, run_id)

    def child_override(self) -> list[str]:
        """The override that makes a job's run a child of this one."""
        return [f"tracking.parent_run_id={self.run_id}"] if self.run_id else []

    def end_lost_runs(self, trial_number: int) -> None:
        """Mark KILLED the still-RUNNING child run of a trial whose worker died without closing it."""
        if not self.run_id:
            return
        experiment_id = self.client.get_run(self.run_id).info.experiment_id
        lost = self.client.search_runs(
            [experiment_id], f"tags.`mlflow.parentRunId` = '{self.run_id}' and tags.`imgexp.trial` = "
                             f"'{trial_number}' and attributes.status = 'RUNNING'")
        for run in lost:
            self.client.set_terminated(run.info.run_id, "KILLED")

    def reused(self) -> int:
        """How many of the sweep's jobs were not trained: records of FINISHED runs of the same config."""
        if not self.run_id:
            return 0
        return count_reused(self.client, self.client.get_run(self.run_id).info.experiment_id, self.run_id)

    def children(self) -> list:
        experiment = self.client.get_run(self.run_id).info.experiment_id
        return self.client.search_runs([experiment], f"tags.`mlflow.parentRunId` = '{self.run_id}'",
                                       max_results=50000)

    def stored_bytes(self) -> int:
        """What the sweep's runs (their artifacts and logged models) hold in the artifact store (0 untracked)."""
        if not self.run_id:
            return 0

        def size(listing, path=None) -> int:
            return sum(size(listing, a.path) if a.is_dir else (a.file_size or 0) for a in listing(path))

        runs = [self.client.get_run(self.run_id), *self.children()]
        models = [o.model_id for r in runs for o in (r.outputs.model_outputs if r.outputs else [])]
        return (sum(size(lambda p, r=r: self.client.list_artifacts(r.info.run_id, p)) for r in runs)
                + sum(size(lambda p, m=m: self.client.list_logged_model_artifacts(m, p)) for m in models))

    def best_child(self, metric: str, maximize: bool):
        """The FINISHED, unpruned child run with the best ``metric`` (None without one)."""
        children = [r for r in self.children() if r.info.status == "FINISHED" and STATUS_TAG not in r.data.tags
                    and metric in r.data.metrics]
        return (max if maximize else min)(children, key=lambda r: r.data.metrics[metric]) if children else None

    def register_best(self, best, metric: str) -> dict[str, str]:
        """Register the model of child run ``best`` (a reused job's: its trained run's) as a new version of
        :attr:`register`; returns tags for the parent run (none without a model)."""
        from imgexp.tracking.logged_model import register  # torch: only when a sweep registers

        if best is None:
            log.warning("no finished job logged %s: no model registered as %r", metric, self.register)
            return {}
        trained = self.client.get_run(best.data.tags.get(REUSED_FROM_TAG, best.info.run_id))
        if not trained.outputs or not trained.outputs.model_outputs:
            log.warning("the best job's run %s logged no model (tracking.log_model=false): none registered as %r",
                        trained.info.run_id, self.register)
            return {}
        model_uri = f"models:/{trained.outputs.model_outputs[-1].model_id}"
        version = register(self.client.tracking_uri, model_uri, self.register, trained.info.run_id)
        return {REGISTERED_TAG: version, "imgexp.registered_run": trained.info.run_id}

    def analyse(self, best, spool_dir: Path) -> None:
        """Draw the default analysis of ``best``'s model (a reused job's: its trained run's, unless that run
        has one) into its run, as a run's report phase draws it; a failure is one warning, the sweep's results
        stand."""
        from imgexp.analysis.report import analyse_model  # matplotlib, torch: only at the end
        from imgexp.analysis.sample import analysis_sample
        from imgexp.analysis.schema import AnalysisConfig
        from imgexp.runtime import resolve_device
        from imgexp.tracking.rebuild import rebuild
        from imgexp.tracking.tracker import MlflowTracker

        run_id, uri = best.data.tags.get(REUSED_FROM_TAG, best.info.run_id), self.client.tracking_uri
        if {a.path for a in self.client.list_artifacts(run_id, "plots")} & {"plots/cam", "plots/tsne"}:
            return
        log.info("analysis of the best job's model (run %s)...", run_id)
        try:
            rebuilt = rebuild(self.client, uri, run_id, resolve_device("auto"))  # a GPU when there is one
            cfg = AnalysisConfig()
            sample = analysis_sample(rebuilt.model_ready("test"), cfg.points, rebuilt.config.seed)
            title = f"best job of the sweep, test/acc {rebuilt.run.data.metrics['test/acc']:.3f}"
            analyse_model(MlflowTracker(self.client, run_id, uri, spool_dir), rebuilt.classifier.model, sample,
                          rebuilt.classifier.class_names, cfg, title)
        except Exception as err:  # noqa: BLE001 - e.g. a job without a logged model (tracking.log_model=false)
            log.warning("the best job's analysis was not drawn: %s", describe(err)[:300])

    def ending(self, best, metric: str) -> str:
        """The sweep's last lines: its parent run and link, the best job, the compare command."""
        lines = [f"sweep parent: {run_location(self.client, self.client.tracking_uri, self.run_id)}"]
        if best is not None:
            lines.append(f"best job: run {best.info.run_id} ({best.info.run_name}), {metric} "
                         f"{best.data.metrics[metric]:.4f}")
        lines.append(f"compare its runs: python -m imgexp.compare sweep={self.run_id}")
        return "\n".join(lines)

    def close(self, failed: bool, metrics: dict[str, float], tags: dict[str, str], files: list[Path],
              root: Optional[Path] = None) -> None:
        """Log the summary (metrics, tags, ``files`` as artifacts: in the folders they are in under ``root``,
        else at the top) and end the run."""
        if not self.run_id:
            return
        self.heartbeat.stop()
        for key, value in metrics.items():
            self.client.log_metric(self.run_id, key, value)
        set_tags(self.client, self.run_id, {key: mask(str(value)) for key, value in tags.items()})
        for path in files:
            folder = path.parent.relative_to(root).as_posix() if root else "."
            self.client.log_artifact(self.run_id, str(path), None if folder == "." else folder)
        self.client.set_terminated(self.run_id, "FAILED" if failed else "FINISHED")


class SweepFailed(RuntimeError):
    """Some jobs of a sweep failed; their runs are recorded and the other jobs ran to the end."""


def job_error(ret: JobReturn) -> Optional[BaseException]:
    """The exception a failed job raised (Hydra's JobReturn keeps it); None for a completed job."""
    return ret._return_value if ret.status == JobStatus.FAILED else None


def failure(ret: JobReturn, error: BaseException) -> dict[str, Any]:
    """A failed job for the summary: its number, the overrides the user asked for, the one-line error."""
    return {"job": ret.hydra_cfg.hydra.job.num if ret.hydra_cfg else None, "overrides": asked(ret.overrides or []),
            "error": describe(error)}


def save_figures(figures: dict[str, Any], folder: Path) -> list[Path]:
    """Write each figure as a PNG at its path under ``folder`` (``optuna/pareto_front.png``) and close it."""
    from imgexp.analysis.pyplot import plt

    paths = []
    for name, figure in figures.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(path, bbox_inches="tight")  # legends drawn outside the axes stay in
        plt.close(figure)
        paths.append(path)
    return paths


def objective(config: DictConfig) -> tuple[str, bool]:
    """A grid sweep's objective: the first ``optimized_metric``, higher better unless it is a loss."""
    metric = as_list(config.optimized_metric)[0]
    return metric, "loss" not in metric


def finish(counts: dict[str, int], failed: list[dict], sweep_dir: Path, parent: ParentRun,
           objective: tuple[str, bool], results: Optional[dict] = None,
           figures: Optional[dict[str, Any]] = None) -> None:
    """Log and save the summary (and ``results``, and ``figures`` by artifact path as PNGs in ``sweep_dir``),
    register the best job's model when the sweep's ``tracking.register`` asks (the best by ``objective``: the
    metric and whether higher is better), close the parent run, end with where everything is, raise if a job
    failed."""
    for f in failed:
        log.error("job %s failed (%s): %s", f["job"], " ".join(f["overrides"]), f["error"])
    stored = parent.stored_bytes()
    log.info("sweep done: %s; summary in %s%s", ", ".join(f"{v} {k}" for k, v in counts.items()), sweep_dir,
             f"; its runs hold {stored / 1e6:.1f} MB in MLflow" if parent.run_id else "")
    files = {"sweep_summary.json": {**counts, "failed": failed}}
    tags = {}
    if results:
        files["optimization_results.json"] = results
        tags = {f"best.{k}": str(v) for k, v in results.get("best_params", {}).items()}
    sweep_dir.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        (sweep_dir / name).write_text(mask(json.dumps(content, indent=2)))
    written = [sweep_dir / name for name in files] + save_figures(figures or {}, sweep_dir)
    metrics = {f"sweep/{k}": float(v) for k, v in counts.items()} | (
        {"sweep/stored_mb": stored / 1e6} if parent.run_id else {})
    if results and "best_value" in results:
        metrics["sweep/best_value"] = float(results["best_value"])
    best = parent.best_child(*objective) if parent.run_id else None
    if parent.light and best is not None:
        parent.analyse(best, sweep_dir / "analysis_spool")
    if parent.register and parent.run_id:
        tags |= parent.register_best(best, objective[0])
    parent.close(bool(failed), metrics, tags, written, sweep_dir)
    if parent.run_id:
        log.info("%s", parent.ending(best, objective[0]))
    if failed:
        raise SweepFailed(f"{len(failed)} of {counts.get('jobs', counts.get('trials'))} jobs failed "
                          f"(details in {sweep_dir / 'sweep_summary.json'}); first: "
                          f"{' '.join(failed[0]['overrides'])}: {failed[0]['error']}")
