"""Hydra's BasicSweeper with one MLflow parent run per sweep, and a failing job recorded, not fatal.

Every job of the grid runs, whatever fails. The sweep then logs how many were trained, reused (see
``imgexp.tracking.reuse``) and failed, writes ``sweep_summary.json`` to the sweep directory and to the
parent run, and raises ``SweepFailed`` (one line, exit 1) if any job failed: ``imgexp.tracking.sweep.finish``,
which the Optuna sweeper ends its sweeps with too.
"""

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.config_store import ConfigStore
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.utils import JobReturn

from imgexp import redact
from imgexp.sweep_nodes import SweepNodes
from imgexp.sweep_overrides import check_composes, hide_internal_overrides, job_name, light_analysis
from imgexp.tracking.store import ERROR_TAG
from imgexp.tracking.sweep import ParentRun, failure, finish, job_error, objective

log = logging.getLogger(__name__)


@dataclass
class GridSweeperConf:
    _target_: str = "hydra_plugins.imgexp_grid_sweeper.grid_sweeper.GridSweeper"
    max_batch_size: Optional[int] = None  # jobs handed to the launcher at once; None: all of them
    params: Optional[Dict[str, str]] = None  # sweeps in override syntax, as for Hydra's basic sweeper


ConfigStore.instance().store(group="hydra/sweeper", name="grid", node=GridSweeperConf, provider="imgexp")


def job_names(jobs: list[list[str]], model: str) -> dict[tuple, list[str]]:
    """Each job's run name, as an override: its model, then the values of the keys that vary between jobs."""
    values = [dict(o.split("=", 1) for o in job) for job in jobs]
    varying = [k for k in dict.fromkeys(k for v in values for k in v) if len({v.get(k) for v in values}) > 1]
    return {tuple(job): job_name([v.get("model", model)] + [f"{k}={v[k]}" for k in varying if k != "model" and k in v])
            for job, v in zip(jobs, values)}


class GridSweeper(BasicSweeper):
    def sweep(self, arguments: List[str]) -> Any:
        assert self.config is not None and self.launcher is not None and self.hydra_context is not None
        redact.install()  # Hydra has configured the sweep's logging: no URI password in it
        nodes = SweepNodes.meet(self.config, arguments)  # jobs over several nodes: one node leads the sweep
        if nodes is not None and not nodes.leads:
            return [nodes.follow(self.launcher)]
        sweep_dir = Path(self.config.hydra.sweep.dir)
        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        self.overrides = self.split_arguments(parser.parse_overrides(self._parse_config() + list(arguments)),
                                              self.max_batch_size)
        jobs = [job for batch in self.overrides for job in batch]
        check_composes(self.hydra_context, self.config, list(jobs[0]), [o for job in jobs[1:] for o in job])
        sweep_dir.mkdir(parents=True, exist_ok=True)
        redact.save_yaml(self.config, sweep_dir / "multirun.yaml")
        parent = ParentRun(self.config.tracking, str(sweep_dir), "grid", arguments)
        light = light_analysis(self.config, [o for job in jobs for o in job])
        parent.light = bool(light)
        hide_internal_overrides()
        names = job_names(jobs, self.config.model.name)
        returns: List[JobReturn] = []
        try:
            while not self.is_done():
                batch = [list(job) + light + parent.child_override() + names[tuple(job)]
                         for job in self.get_job_batch()]
                self.validate_batch_is_legal(batch)
                if nodes is not None:
                    nodes.publish(batch, len(returns))
                returns.extend(self.launcher.launch(batch, initial_job_idx=len(returns)))
        except BaseException:
            parent.close(True, {}, {ERROR_TAG: "sweep interrupted"}, [])
            if nodes is not None:
                nodes.close(interrupted=True)
            raise
        if nodes is not None:
            nodes.close()
        failed = [failure(r, job_error(r)) for r in returns if job_error(r) is not None]
        reused = parent.reused()
        finish({"jobs": len(returns), "trained": len(returns) - len(failed) - reused, "reused": reused,
                "failed": len(failed)}, failed, sweep_dir, parent, objective(self.config))
        return [returns]
