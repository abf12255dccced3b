"""The statistics of a comparison, all computed by scipy: a t-based 95% confidence interval of each cell's
mean, and each column's difference to a baseline column with its 95% CI and p-value: paired over matching
seeds when the seeds pair up (a paired t-test; below :data:`EXACT_BELOW` pairs, the exact sign-flip
permutation test), otherwise Welch's t-test; Holm's correction across the columns of one metric."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

LEVEL = 0.95
MIN_RUNS = 3  # fewer runs a side: "too few runs", no p-value
EXACT_BELOW = 10  # pairs: under this many, the exact permutation test (2^n sign flips) gives p


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


def difference(base: pd.Series, other: pd.Series) -> Difference:
    """``other`` - ``base``; both are values indexed by seed."""
    paired = (base.index.notna().all() and other.index.notna().all() and base.index.is_unique
              and other.index.is_unique and set(base.index) == set(other.index))
    if min(len(base), len(other)) < MIN_RUNS:
        return Difference(float(other.mean() - base.mean()), math.nan, math.nan, math.nan, "too few runs")
    if paired:
        d = (other - base.reindex(other.index)).to_numpy(dtype=float)
        low, high = mean_ci(d)
        if np.all(d == d[0]):  # no spread: every sign flip gives the same |mean| when d is 0
            p = 1.0 if d[0] == 0 else 2.0 / 2 ** len(d)
            return Difference(float(d.mean()), low, high, p, "paired (no spread)")
        if len(d) < EXACT_BELOW:
            result = stats.permutation_test((d,), np.mean, permutation_type="samples", n_resamples=math.inf,
                                            alternative="two-sided")
            return Difference(float(d.mean()), low, high, float(result.pvalue), "paired sign-flip permutation")
        result = stats.ttest_rel(other.reindex(base.index), base)
        return Difference(float(d.mean()), low, high, float(result.pvalue), "paired t-test")
    result = stats.ttest_ind(other, base, equal_var=False)
    low, high = result.confidence_interval(LEVEL)
    return Difference(float(other.mean() - base.mean()), float(low), float(high), float(result.pvalue),
                      "Welch t-test")


def holm(p: pd.Series) -> pd.Series:
    """Holm's step-down correction of the p-values of one family (NaN ones left out)."""
    given = p.dropna().sort_values()
    m = len(given)
    scaled = np.maximum.accumulate([(m - i) * v for i, v in enumerate(given)])
    return pd.Series(np.minimum(1.0, scaled), index=given.index).reindex(p.index)
