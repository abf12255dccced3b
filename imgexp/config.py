"""The config's core: the root schema (top-level keys and the ``trial`` block), the error a bad value
raises, validation of a composed config against every schema, and the config hash.

Each group's option schemas sit beside the code they configure (``imgexp/models/``, ``imgexp/data/schema.py``,
...); :mod:`imgexp.register` stores them all in Hydra's ConfigStore. Every YAML under ``conf/<group>/``
pulls its schema in with ``- /schema/<group>/<name>@_here_``, so Hydra rejects unknown keys and wrong types
while composing, and :func:`validate` checks value ranges (``batch=0``) through each dataclass's
``__post_init__``.
"""
from __future__ import annotations

import copy
import hashlib
import json
import re
from dataclasses import dataclass, field, fields
from typing import Any, Optional

from omegaconf import MISSING, DictConfig, OmegaConf


class ConfigError(ValueError):
    """A config value out of range; ``key`` is its dotted path."""

    def __init__(self, key: str, reason: str) -> None:
        super().__init__(f"{key}: {reason}")
        self.key, self.reason = key, reason


def require(ok: bool, key: str, reason: str) -> None:
    if not ok:
        raise ConfigError(key, reason)


def require_choice(value: str, choices: tuple[str, ...], key: str) -> None:
    require(value in choices, key, f"must be one of {', '.join(choices)}, got {value!r}")


# ---------------------------------------------------------------- root
@dataclass
class TrialConfig:
    """The Optuna trial a job belongs to; set by ``hydra/sweeper=optuna``, never by hand."""

    storage: Optional[str] = None
    study: Optional[str] = None
    id: Optional[int] = None
    number: Optional[int] = None


def as_list(value: Any) -> list:
    """A config value that may be one item or several (``optimized_metric``, compare's ``columns``) as a
    list: a scalar as one item, None as none, a list or ListConfig as it is."""
    if value is None:
        return []
    return [value] if isinstance(value, (str, int, float, bool)) else list(value)


REUSE_MODES = ("true", "false", "any")


def reuse_mode(value: Any) -> str:
    """``reuse=`` as one of :data:`REUSE_MODES` (``reuse=false`` arrives as a bool, stored as "False"):
    whether a sweep job takes a FINISHED run with its config instead of training (``any``: also a run of
    another code version)."""
    return str(value).lower()


@dataclass
class Config:
    model: Any = MISSING
    data: Any = MISSING
    augmentation: Any = MISSING
    normalization: Any = MISSING
    optimizer: Any = MISSING
    scheduler: Any = MISSING
    loss: Any = MISSING
    tracking: Any = MISSING
    analysis: Any = MISSING
    trainer: Any = MISSING
    epochs: int = 10
    batch: int = 64
    seed: int = 0
    device: str = "auto"
    jobs_per_gpu: int = 1  # sweep jobs sharing one GPU (each claims a slot of a GPU; see imgexp/gpus.py)
    topk: int = 2
    optimized_metric: Any = "val/acc_best"  # one metric name, or a list of them (multi-objective sweeps)
    progress: bool = True
    resume: Optional[str] = None  # auto | an output dir | a checkpoint (last.pt) | an MLflow run id
    reuse: str = "true"  # in a sweep: true | false | any (see reuse_mode)
    trial: TrialConfig = field(default_factory=TrialConfig)

    def __post_init__(self) -> None:
        require(self.epochs >= 1, "epochs", f"must be >= 1, got {self.epochs}")
        require(self.batch >= 1, "batch", f"must be >= 1, got {self.batch}")
        require(self.topk >= 1, "topk", f"must be >= 1, got {self.topk}")
        require(self.jobs_per_gpu >= 1, "jobs_per_gpu", f"must be >= 1, got {self.jobs_per_gpu}")
        for metric in as_list(self.optimized_metric):
            require(isinstance(metric, str) and metric.split("/")[0] in ("train", "val", "test"), "optimized_metric",
                    f"must be train/, val/ or test/ metrics, got {self.optimized_metric!r}")
        require_choice(reuse_mode(self.reuse), REUSE_MODES, "reuse")
        require(
            self.device in ("auto", "cpu", "mps") or self.device.startswith("cuda"),
            "device",
            f"must be auto, cpu, mps or cuda[:N], got {self.device!r}",
        )


# Keys that cannot change what a run computes: left out of its config hash.
UNHASHED_KEYS = ("tracking", "progress", "resume", "reuse", "trial", "jobs_per_gpu", "data.num_workers",
                 "data.cache_dir", "data.cache_max_gb", "trainer.rendezvous", "trainer.rendezvous_timeout_s")


def hashed_part(cfg: DictConfig | dict) -> dict:
    """The resolved config as plain containers, less :data:`UNHASHED_KEYS`: what decides a run's result."""
    resolved = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else copy.deepcopy(cfg)
    for key in UNHASHED_KEYS:
        *path, last = key.split(".")
        node = resolved
        for part in path:
            node = node.get(part, {})
        node.pop(last, None)
    return resolved


def config_hash(cfg: DictConfig) -> str:
    """A short hash of :func:`hashed_part`: two runs with the same hash train the same thing (``resume=auto``
    finds an interrupted run by it)."""
    return hashlib.sha256(json.dumps(hashed_part(cfg), sort_keys=True, default=str).encode()).hexdigest()[:16]


def flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    """Nested containers as ``{"optimizer.lr": 0.001, ...}``."""
    if not isinstance(node, dict):
        return {prefix[:-1]: node}
    return {k: v for key, value in node.items() for k, v in flatten(value, f"{prefix}{key}.").items()}


def flat_params(cfg: DictConfig) -> dict[str, object]:
    """The resolved config as ``{"optimizer.lr": 0.001, ...}`` for MLflow params (``_partial_`` left out)."""
    return {k: v for k, v in flatten(OmegaConf.to_container(cfg, resolve=True)).items()
            if not k.endswith("._partial_")}


ABSENT = "(none)"  # a key one of two configs does not have


def differences(recorded: dict, cfg: DictConfig) -> list[tuple[str, Any, Any]]:
    """The keys that decide a run's result and differ between a run's ``recorded`` config (plain
    containers) and ``cfg``, as ``(key, recorded, now)``; :data:`ABSENT` where a config lacks the key."""
    old, new = flatten(hashed_part(recorded)), flatten(hashed_part(cfg))
    return [(k, old.get(k, ABSENT), new.get(k, ABSENT)) for k in sorted(old.keys() | new.keys())
            if old.get(k, ABSENT) != new.get(k, ABSENT)]


def as_override(key: str, value: Any) -> Optional[str]:
    """``key=value`` as a command-line override, for a scalar (None where it takes more than one)."""
    if value is None or isinstance(value, (bool, int, float)):
        return f"{key}={json.dumps(value)}"
    if isinstance(value, str) and value != ABSENT and re.fullmatch(r"[\w./-]+", value):
        return f"{key}={value}"
    return None


def unknown_keys(node: DictConfig, schema: type, prefix: str) -> None:
    """Keys a ``+key=value`` override added that ``schema`` does not have (Hydra lets ``+`` add any key)."""
    known = {f.name for f in fields(schema)}
    extra = [k for k in node if k not in known]
    if extra:
        raise ConfigError(f"{prefix}{extra[0]}", f"unknown key; {prefix.rstrip('.') or 'the config'} has "
                                                 f"{', '.join(sorted(known - {'_partial_'}))}")


def validate(cfg: DictConfig) -> None:
    """Run every schema's range checks and reject keys no schema has; raise :class:`ConfigError` naming
    the full key."""
    unknown_keys(cfg, Config, "")
    for key, node in cfg.items():
        if OmegaConf.is_dict(node) and OmegaConf.get_type(node) not in (dict, None):
            unknown_keys(node, OmegaConf.get_type(node), f"{key}.")
            try:
                OmegaConf.to_object(node)
            except ConfigError as err:
                raise ConfigError(f"{key}.{err.key}", err.reason) from None
    OmegaConf.to_object(cfg)  # the root schema checks the top-level keys
    check_early_stop_metric(cfg)


def check_early_stop_metric(cfg: DictConfig) -> None:
    """``trainer.early_stop_metric`` must be one of the epoch's metrics: the trainer's and the loss's (their
    schemas' ``EPOCH_METRICS``), checked before training rather than after its first epoch."""
    from imgexp.errors import closest

    trainer, loss = (OmegaConf.get_type(cfg[key]) if OmegaConf.is_dict(cfg.get(key)) else None
                     for key in ("trainer", "loss"))
    known = [*getattr(trainer, "EPOCH_METRICS", ()), *getattr(loss, "EPOCH_METRICS", ())]
    metric = OmegaConf.select(cfg, "trainer.early_stop_metric")
    if known and metric not in known:
        near = closest(str(metric), known)
        raise ConfigError("trainer.early_stop_metric", f"{metric!r} is not an epoch metric of this run"
                          + (f" (did you mean {' or '.join(near)}?)" if near else "") + f" (available: "
                          f"{', '.join(known)})")
