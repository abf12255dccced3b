"""The statistics of a comparison, all computed by scipy: a t-based 95% confidence interval of each cell's
mean, and each column's difference to a baseline column with its 95% CI and p-value. Over matching seeds
(paired) the p-value is the paired t-test's by default (``test=t``), the sign-flip permutation test's
(``test=permutation``) or Welch's (``test=welch``); the sign-flip p is always reported beside it as a check.
Unpaired, Welch's t-test. Holm's correction across the columns of one metric."""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd
from scipy import stats

LEVEL = 0.95
MIN_RUNS = 3  # fewer runs a side: "too few runs", no p-value
SMALL_N = 10  # pairs: under this many, the output says the smallest p the exact sign-flip test can reach
EXACT_MAX = 14  # pairs: up to this many, the sign-flip test tries all 2^n flips; above, RANDOM_FLIPS of them
RANDOM_FLIPS = 9999


def fraction(metric: str) -> bool:
    """Whether ``metric`` is an accuracy, a top-k accuracy or an F1 score: between 0 and 1, as its interval."""
    return metric.rsplit("/", 1)[-1].startswith(("acc", "top", "f1"))


def mean_ci(values) -> tuple[float, float]:
    """t-based 95% confidence interval of the mean; NaN for fewer than 2 values."""
    v = np.asarray(values, dtype=float)
    if len(v) < 2:
        return math.nan, math.nan
    sem = stats.sem(v)
    if sem == 0:
        return float(v.mean()), float(v.mean())
    low, high = stats.t.interval(LEVEL, len(v) - 1, loc=v.mean(), scale=sem)
    return float(low), float(high)


@dataclass
class Difference:
    diff: float  # mean of the column minus mean of the baseline (paired: mean of the differences)
    low: float
    high: float
    p: float
    test: str
    p_perm: float = math.nan  # paired: the sign-flip permutation p (the check beside a t-test's p)
    p_min: float = math.nan  # paired, under SMALL_N pairs: the smallest p the exact sign-flip test can give


def constant(values) -> bool:
    """All values equal, up to rounding (a t statistic is then undefined)."""
    v = np.asarray(values, dtype=float)
    return bool(np.allclose(v, v[0], rtol=1e-9, atol=1e-12))


def paired(base: pd.Series, other: pd.Series) -> bool:
    """Both sides have the same seeds, each once."""
    return bool(base.index.notna().all() and other.index.notna().all() and base.index.is_unique
                and other.index.is_unique and set(base.index) == set(other.index))


def sign_flip(d: np.ndarray) -> tuple[float, str]:
    """The two-sided sign-flip permutation p of the mean of the differences ``d``, and the test's name: exact
    (all 2^n flips) up to :data:`EXACT_MAX` pairs, else from :data:`RANDOM_FLIPS` random flips (seeded)."""
    exact = len(d) <= EXACT_MAX
    result = stats.permutation_test((d,), np.mean, permutation_type="samples", alternative="two-sided",
                                    n_resamples=math.inf if exact else RANDOM_FLIPS, rng=0)
    return float(result.pvalue), "sign-flip permutation" + ("" if exact else f" ({RANDOM_FLIPS} random flips)")


def welch(base: pd.Series, other: pd.Series) -> Difference:
    """Welch's t-test (unequal variances); undefined when neither side varies."""
    diff = float(other.mean() - base.mean())
    if constant(base) and constant(other):
        return Difference(diff, math.nan, math.nan, math.nan, "Welch t-test undefined (no spread)")
    result = stats.ttest_ind(other, base, equal_var=False)
    low, high = result.confidence_interval(LEVEL)
    return Difference(diff, float(low), float(high), float(result.pvalue), "Welch t-test")


def difference(base: pd.Series, other: pd.Series, test: str = "t") -> Difference:
    """``other`` - ``base``; both are values indexed by seed. ``test`` (t, permutation or welch) picks the
    main p-value of paired seeds; unpaired ones always get Welch's."""
    if min(len(base), len(other)) < MIN_RUNS:
        return Difference(float(other.mean() - base.mean()), math.nan, math.nan, math.nan, "too few runs")
    if not paired(base, other):
        return welch(base, other)
    d = (other - base.reindex(other.index)).to_numpy(dtype=float)
    p_perm, perm = sign_flip(d)
    p_min = 2.0 / 2 ** len(d) if len(d) < SMALL_N else math.nan
    if test == "welch":
        return replace(welch(base, other), p_perm=p_perm, p_min=p_min)
    low, high = mean_ci(d)
    if test == "permutation":
        p, name = p_perm, f"paired {perm}"
    elif constant(d):
        p, name = p_perm, f"paired {perm} (t-test undefined: all differences equal)"
    else:
        p, name = float(stats.ttest_rel(other.reindex(base.index), base).pvalue), "paired t-test"
    return Difference(float(d.mean()), low, high, p, name, p_perm, p_min)


def holm(p: pd.Series) -> pd.Series:
    """Holm's step-down correction of the p-values of one family (NaN ones left out)."""
    given = p.dropna().sort_values()
    m = len(given)
    scaled = np.maximum.accumulate([(m - i) * v for i, v in enumerate(given)])
    return pd.Series(np.minimum(1.0, scaled), index=given.index).reindex(p.index)
