"""Hydra override grammar -> Optuna distributions, and sampled values -> override strings.

``choice(a,b)`` / ``a,b`` -> categorical; ``range(1,5)`` -> integers 1..4 (Hydra's stop is exclusive);
``interval(lo,hi)`` -> float (``int(interval(...))`` -> integer); ``tag(log, interval(...))`` -> log scale.
"""
from __future__ import annotations

from typing import Any

from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, Override, RangeSweep, Transformer
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution


def distribution(override: Override) -> BaseDistribution:
    value = override.value()
    key = override.get_key_element()
    if isinstance(value, ChoiceSweep):
        return CategoricalDistribution(list(override.sweep_iterator(transformer=Transformer.encode)))
    if isinstance(value, RangeSweep):
        values = list(override.sweep_iterator())
        if all(isinstance(v, int) for v in values) and not value.shuffle:
            return IntDistribution(values[0], values[-1], step=int(value.step))
        return CategoricalDistribution(values)
    if isinstance(value, IntervalSweep):
        log = "log" in value.tags
        if isinstance(value.start, int) and isinstance(value.end, int):
            return IntDistribution(value.start, value.end, log=log)
        return FloatDistribution(value.start, value.end, log=log)
    raise ValueError(f"{key}: the Optuna sweeper cannot sample {override.input_line!r}")


def split(overrides: list[Override]) -> tuple[dict[str, BaseDistribution], list[str]]:
    """The search space (key -> distribution) and the fixed overrides every trial gets."""
    space: dict[str, BaseDistribution] = {}
    fixed: list[str] = []
    for override in overrides:
        if override.is_sweep_override():
            space[override.get_key_element()] = distribution(override)
        else:
            fixed.append(f"{override.get_key_element()}={override.get_value_element_as_str()}")
    return space, fixed


def as_override(key: str, value: Any) -> str:
    """A sampled value back in override syntax (categorical strings come already encoded)."""
    if isinstance(value, bool):
        return f"{key}={str(value).lower()}"
    if value is None:
        return f"{key}=null"
    return f"{key}={value!r}" if isinstance(value, float) else f"{key}={value}"


def grid(space: dict[str, BaseDistribution]) -> dict[str, list]:
    """The values of each dimension for Optuna's GridSampler (categorical and integer ones only)."""
    out = {}
    for key, dist in space.items():
        if isinstance(dist, CategoricalDistribution):
            out[key] = list(dist.choices)
        elif isinstance(dist, IntDistribution) and not dist.log:
            out[key] = list(range(dist.low, dist.high + 1, dist.step))
        else:
            raise ValueError(f"{key}: sampler=grid needs choice() or range() values, not an interval")
    return out


def quote(value: str) -> str:
    """A string as a quoted override value (storage URLs hold ':' and '/')."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
