"""Where a run starts from (its first phase, decided by rank 0): a FINISHED run of the same config to reuse (a
sweep's job is not trained twice), an interrupted run to resume (``resume=``, a requeued SLURM job, a sweep job
whose config was interrupted), or nothing: a new run. Also the run's name and tags, and what a job returns."""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

from omegaconf import DictConfig

from imgexp.config import as_list, config_hash, reuse_mode
from imgexp.sweep_overrides import asked
from imgexp.tracking import resume, reuse
from imgexp.tracking.store import CONFIG_HASH_TAG

log = logging.getLogger(__name__)


def returned(cfg: DictConfig, final: dict[str, float]) -> float | list[float]:
    """What the job returns to a sweeper: ``cfg.optimized_metric``'s value, or the list of them."""
    values = [final[m] for m in as_list(cfg.optimized_metric)]
    return values[0] if isinstance(cfg.optimized_metric, str) else values


def run_name_of(cfg: DictConfig) -> str:
    return cfg.tracking.run_name or cfg.tracking.job_name or f"{cfg.model.name}-{cfg.data.name}"


@dataclass
class Start:
    """Where a run starts from (rank 0 decides): its tags, its config hash, and either the values of a
    FINISHED run it reuses, or the interrupted run it continues, or neither (a new run)."""

    tags: dict[str, str]
    digest: str = ""
    values: Any = None  # a reused run's: the job returns them without training
    resumed: Optional[resume.Resumed] = None

    @classmethod
    def of(cls, cfg: DictConfig, overrides: Sequence[str]) -> "Start":
        tags = {"imgexp.overrides": " ".join(asked(overrides)), "imgexp.model": cfg.model.name, "imgexp.data": cfg.data.name}
        if cfg.trial.number is not None:
            tags["imgexp.trial"] = str(cfg.trial.number)
        return cls(tags)

    def shared(self) -> dict:
        """What the other ranks need of it (not the resumed state: they read it from the checkpoint)."""
        return {"values": self.values, "resumed": self.resumed is not None, "digest": self.digest}


def starting_point(cfg: DictConfig, output_dir: Path, overrides: Sequence[str]) -> Start:
    """Phase 1 (rank 0): reuse a FINISHED run of the config (sweeps), or find the run to resume
    (``resume=``, a requeued SLURM job, a sweep job whose config was interrupted), or start anew."""
    start = Start.of(cfg, overrides)
    start.digest = config_hash(cfg)
    start.tags[CONFIG_HASH_TAG] = start.digest
    metrics = as_list(cfg.optimized_metric)
    wanted = cfg.resume
    if wanted is None and int(os.environ.get("SLURM_RESTART_COUNT", "0")) > 0 and cfg.tracking.enabled:
        log.info("a requeued SLURM job: resume=auto")
        wanted = "auto"
    if wanted is None and cfg.tracking.enabled and cfg.tracking.parent_run_id and reuse_mode(cfg.reuse) != "false":
        reused = reuse.reuse_finished(cfg.tracking, start.digest, reuse_mode(cfg.reuse), metrics, run_name_of(cfg),
                                      start.tags)
        if reused is not None:
            start.values = returned(cfg, reused.data.metrics)
            return start
        wanted = "auto"  # a sweep job continues an interrupted run of its config
    asked = cfg.resume is not None or int(os.environ.get("SLURM_RESTART_COUNT", "0")) > 0
    start.resumed = resume.prepare(wanted, cfg, start.digest, staged_dir(output_dir), asked) if wanted else None
    if start.resumed is not None:  # the run keeps the config hash and overrides it was started with
        start.tags = {k: v for k, v in start.tags.items() if k not in (CONFIG_HASH_TAG, "imgexp.overrides")}
    return start


def staged_dir(output_dir: Path) -> Path:
    return output_dir / "checkpoints" / "resumed"  # until the run id names the run's own folder
