"""Hydra's BasicSweeper with one MLflow parent run per sweep, and a failing job recorded, not fatal.

Every job of the grid runs, whatever fails. The sweep then logs how many were trained, reused (see
``imgexp.tracking.reuse``) and failed, writes ``sweep_summary.json`` to the sweep directory and to the
parent run, and raises :class:`SweepFailed` (one line, exit 1) if any job failed. The Optuna sweeper ends
its sweeps with the same :func:`finish`.
"""

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.config_store import ConfigStore
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.utils import JobReturn, JobStatus
from omegaconf import OmegaConf

from imgexp.errors import describe
from imgexp.tracking.mlflow import ERROR_TAG
from imgexp.tracking.sweep import SWEEPER_KEYS, ParentRun, hide_internal_overrides, job_name

log = logging.getLogger(__name__)


@dataclass
class GridSweeperConf:
    _target_: str = "hydra_plugins.imgexp_grid_sweeper.grid_sweeper.GridSweeper"
    max_batch_size: Optional[int] = None  # jobs handed to the launcher at once; None: all of them
    params: Optional[Dict[str, str]] = None  # sweeps in override syntax, as for Hydra's basic sweeper


ConfigStore.instance().store(group="hydra/sweeper", name="grid", node=GridSweeperConf, provider="imgexp")


class SweepFailed(RuntimeError):
    """Some jobs of a sweep failed; their runs are recorded and the other jobs ran to the end."""


def job_error(ret: JobReturn) -> Optional[BaseException]:
    """The exception a failed job raised (Hydra's JobReturn keeps it); None for a completed job."""
    return ret._return_value if ret.status == JobStatus.FAILED else None


def failure(ret: JobReturn, error: BaseException) -> dict[str, Any]:
    """A failed job for the summary: its number, the overrides the user asked for, the one-line error."""
    asked = [o for o in ret.overrides or [] if not o.startswith(SWEEPER_KEYS)]
    return {"job": ret.hydra_cfg.hydra.job.num if ret.hydra_cfg else None, "overrides": asked,
            "error": describe(error)}


def finish(counts: dict[str, int], failed: list[dict], sweep_dir: Path, parent: ParentRun,
           results: Optional[dict] = None) -> None:
    """Log and save the summary (and ``results``), close the parent run, raise if a job failed."""
    for f in failed:
        log.error("job %s failed (%s): %s", f["job"], " ".join(f["overrides"]), f["error"])
    log.info("sweep done: %s; summary in %s", ", ".join(f"{v} {k}" for k, v in counts.items()), sweep_dir)
    files = {"sweep_summary.json": {**counts, "failed": failed}}
    tags = {}
    if results:
        files["optimization_results.json"] = results
        tags = {f"best.{k}": str(v) for k, v in results.get("best_params", {}).items()}
    sweep_dir.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        (sweep_dir / name).write_text(json.dumps(content, indent=2))
    written = [sweep_dir / name for name in files]
    metrics = {f"sweep/{k}": float(v) for k, v in counts.items()}
    if results and "best_value" in results:
        metrics["sweep/best_value"] = float(results["best_value"])
    parent.close(bool(failed), metrics, tags, written)
    if failed:
        raise SweepFailed(f"{len(failed)} of {counts.get('jobs', counts.get('trials'))} jobs failed "
                          f"(details in {sweep_dir / 'sweep_summary.json'}); first: "
                          f"{' '.join(failed[0]['overrides'])}: {failed[0]['error']}")


def job_names(jobs: list[list[str]], model: str) -> dict[tuple, list[str]]:
    """Each job's run name, as an override: its model, then the values of the keys that vary between jobs."""
    values = [dict(o.split("=", 1) for o in job) for job in jobs]
    varying = [k for k in dict.fromkeys(k for v in values for k in v) if len({v.get(k) for v in values}) > 1]
    return {tuple(job): job_name([v.get("model", model)] + [f"{k}={v[k]}" for k in varying if k != "model" and k in v])
            for job, v in zip(jobs, values)}


class GridSweeper(BasicSweeper):
    def sweep(self, arguments: List[str]) -> Any:
        assert self.config is not None and self.launcher is not None and self.hydra_context is not None
        sweep_dir = Path(self.config.hydra.sweep.dir)
        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        self.overrides = self.split_arguments(parser.parse_overrides(self._parse_config() + list(arguments)),
                                              self.max_batch_size)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
        parent = ParentRun(self.config.tracking, str(sweep_dir), "grid", arguments)
        hide_internal_overrides()
        names = job_names([job for batch in self.overrides for job in batch], self.config.model.name)
        returns: List[JobReturn] = []
        try:
            while not self.is_done():
                batch = [list(job) + parent.child_override() + names[tuple(job)] for job in self.get_job_batch()]
                self.validate_batch_is_legal(batch)
                returns.extend(self.launcher.launch(batch, initial_job_idx=len(returns)))
        except BaseException:
            parent.close(True, {}, {ERROR_TAG: "sweep interrupted"}, [])
            raise
        failed = [failure(r, job_error(r)) for r in returns if job_error(r) is not None]
        reused = parent.reused()
        finish({"jobs": len(returns), "trained": len(returns) - len(failed) - reused, "reused": reused,
                "failed": len(failed)}, failed, sweep_dir, parent)
        return [returns]
