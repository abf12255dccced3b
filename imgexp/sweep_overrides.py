"""The overrides imgexp's sweepers add to each job (a job's parent run, its run name, its trial), told apart
from those the user asked for; hidden from the launchers' logs; a job's run name; the choice of a light analysis
for sweep jobs; and the check, before a sweep records anything, that each of its jobs composes."""
from __future__ import annotations

import logging
import re
from typing import Sequence

from omegaconf import DictConfig

log = logging.getLogger(__name__)
SWEEPER_KEYS = ("tracking.parent_run_id=", "tracking.job_name=", "trial.")  # overrides the sweepers add to jobs
INTERNAL = re.compile(r"\s*(?:" + "|".join(re.escape(k) if k.endswith("=") else re.escape(k) + r"\w+="
                                             for k in SWEEPER_KEYS) + r")(?:'(?:\\.|[^'])*'|\S+)")


def asked(overrides: Sequence[str]) -> list[str]:
    """The overrides the user asked for: ``overrides`` less those the sweepers add (:data:`SWEEPER_KEYS`)."""
    return [o for o in overrides if not o.startswith(SWEEPER_KEYS)]


class HideInternalOverrides(logging.Filter):
    """Launchers log each job's overrides: leave out those the sweepers add (:data:`SWEEPER_KEYS`)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if INTERNAL.search(record.getMessage()):
            record.msg, record.args = INTERNAL.sub("", record.getMessage()), None
        return True


LAUNCHER_LOGGERS = ("hydra._internal.core_plugins.basic_launcher", "hydra_plugins.hydra_joblib_launcher._core",
                    "hydra_plugins.hydra_submitit_launcher.submitit_launcher")


def hide_internal_overrides() -> None:
    """Install :class:`HideInternalOverrides` on the loggers of Hydra's launchers that imgexp presets use."""
    for name in LAUNCHER_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, HideInternalOverrides) for f in logger.filters):
            logger.addFilter(HideInternalOverrides())


def job_name(words: list[str]) -> list[str]:
    """The override that names a job's run, e.g. by its swept values (``small_cnn epochs=1 batch=32``)."""
    name = " ".join(words)[:240]
    return [f"tracking.job_name='{name}'"] if name and "'" not in name and "\\" not in name else []


def light_analysis(config: DictConfig, overrides: list[str]) -> list[str]:
    """``analysis=none`` for a sweep's jobs (learning curves and confusion matrices only: the analysis costs
    seconds per job), unless the sweep chose its analysis (any ``analysis`` override, or a template, whose
    defaults list chooses it); the sweep's best job is analysed at its end (:meth:`ParentRun.analyse`)."""
    chosen = any(o.lstrip("+~").split("=", 1)[0].split(".")[0] == "analysis" for o in overrides)
    if chosen or config.hydra.job.config_name != "config":
        return []
    log.info("sweep jobs draw learning curves and confusion matrices only (analysis=none); the best job's "
             "analysis is drawn at the end (analysis=default draws it in every job)")
    return ["analysis=none"]


def check_composes(hydra_context, config: DictConfig, base: list[str], variants: list[str]) -> None:
    """Compose the job ``base`` and, for each override of ``variants``, ``base`` with that key's value
    replaced, before anything is recorded: a value no option has (``model=resnet181``) stops the sweep with
    one line before its parent run exists. Value checks (``batch=0``) stay with each job, which records them."""
    def key(override: str) -> str:
        return override.split("=", 1)[0]

    def with_value(variant: str) -> list[str]:
        job = [variant if key(o) == key(variant) else o for o in base]
        return job if variant in job else job + [variant]

    for job in [base] + [with_value(v) for v in dict.fromkeys(variants) if v not in base]:
        hydra_context.config_loader.load_sweep_config(config, job)

