"""Aggregation: each counted run's value of each metric (best or last epoch), reruns of one seed averaged,
mean ± std (n seeds) per (metric, column), and the reason for every empty cell; pandas renders it as Markdown,
CSV and LaTeX."""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Optional

import pandas as pd

from imgexp.compare.select import Selection
from imgexp.compare.stats import EXACT_MAX, MIN_RUNS, RANDOM_FLIPS, SMALL_N, difference, fraction, holm, mean_ci
from imgexp.config import ConfigError


def metric_value(sel: Selection, run: pd.Series, metric: str, epoch: str) -> float:
    """The run's value of ``metric``: metrics logged once as they are; per-epoch ones (step = epoch) at the
    run's ``val/best_epoch`` or at its last epoch; NaN if not logged."""
    if epoch == "last":
        return run.get(f"metrics.{metric}", math.nan)  # MLflow's latest value: that of the highest step
    history = sel.history(run.run_id, metric)
    if history and history[-1][0] == 0:
        return history[-1][1]
    best = run.get("metrics.val/best_epoch")  # None or NaN when not logged: then no step matches
    return next((value for step, value in reversed(history) if step == best), math.nan)


def run_values(sel: Selection, metrics: list[str], epoch: str) -> pd.DataFrame:
    """Long format: ``run_id``, ``column``, ``metric``, ``value``, one row per counted run and metric."""
    counted = sel.counted
    unknown = [m for m in metrics if f"metrics.{m}" not in sel.runs]
    if unknown and not counted.empty:
        logged = sorted(c.removeprefix("metrics.") for c in sel.runs if c.startswith("metrics."))
        raise ConfigError("metrics", f"{', '.join(map(repr, unknown))} not logged by any selected run "
                                     f"(logged: {', '.join(logged)})")
    rows = [(run.run_id, run.column, run.get("params.seed"), m, metric_value(sel, run, m, epoch))
            for _, run in counted.iterrows() for m in metrics]
    return pd.DataFrame(rows, columns=["run_id", "column", "seed", "metric", "value"])


def merge_repeats(values: pd.DataFrame) -> pd.DataFrame:
    """:func:`run_values` with one value per (metric, column, seed): runs of one setting with the same seed
    (a config rerun) are not independent samples, so their values are averaged; ``runs`` counts the runs
    behind a value. Runs without a seed stay apart; missing values are dropped."""
    given = values.dropna(subset=["value"])
    seeded = given.seed.notna()
    merged = given[seeded].groupby(["metric", "column", "seed"], sort=False, as_index=False).agg(
        run_id=("run_id", "first"), value=("value", "mean"), runs=("value", "size"))
    return pd.concat([merged, given[~seeded].assign(runs=1)], ignore_index=True)[[*values.columns, "runs"]]


def repeats(k: int) -> str:
    return f"{k} repeat{'s' if k > 1 else ''} merged"


def lower_is_better(metric: str) -> bool:
    return "loss" in metric


DIFF = ["diff", "diff_low", "diff_high", "p", "p_holm", "p_perm", "p_min", "test"]  # compare_to's columns


def compare_to(values: pd.DataFrame, stats_: pd.DataFrame, baseline: str, metrics: list[str],
               test: str = "t") -> pd.DataFrame:
    """Per (metric, column): the difference to ``baseline``'s values (:func:`merge_repeats`; see
    :func:`imgexp.compare.stats.difference`) and its Holm-corrected p-value across the columns of the metric."""
    rows = []
    for metric in metrics:
        of = values[values.metric == metric]
        base = of[of.column == baseline].set_index("seed").value
        for column in stats_.loc[metric].index:
            if column == baseline or of[of.column == column].empty or base.empty:
                continue
            d = difference(base, of[of.column == column].set_index("seed").value, test)
            rows.append({"metric": metric, "column": column, "diff": d.diff, "diff_low": d.low,
                         "diff_high": d.high, "p": d.p, "p_perm": d.p_perm, "p_min": d.p_min, "test": d.test})
    out = pd.DataFrame(rows, columns=["metric", "column", *DIFF])
    out["p_holm"] = pd.concat([holm(g.p) for _, g in out.groupby("metric")]) if len(out) else []
    return out.set_index(["metric", "column"])[DIFF]


def why_missing(sel: Selection, column: str) -> str:
    runs = sel.runs[sel.runs.column == column]
    reasons = list(dict.fromkeys(runs.excluded.dropna()))
    if runs.excluded.isna().any():
        reasons.insert(0, "not logged")
    return "; ".join(reasons)


@dataclass
class Table:
    """``stats``: one row per (metric, column) with ``mean``, ``std``, ``n`` (distinct seeds), ``repeats``
    (runs merged into a seed's value), ``missing`` (why n is 0), the 95% CI of the mean (``ci_low``,
    ``ci_high``) and, with a ``baseline`` column, the difference to it (``diff``, ``diff_low``, ``diff_high``,
    ``p``, ``p_holm``, ``p_perm``: the sign-flip p, ``p_min``: its smallest possible value, ``test``)."""

    stats: pd.DataFrame
    sel: Selection
    labels: dict[str, str]
    digits: int
    baseline: Optional[str] = None
    test: str = "t"
    SIGNIFICANCE = 0.05

    @classmethod
    def build(cls, sel: Selection, values: pd.DataFrame, metrics: list[str], labels: dict[str, str],
              digits: int, baseline: Optional[str] = None, test: str = "t") -> "Table":
        """``values``: :func:`merge_repeats`' one value per seed."""
        cells = pd.MultiIndex.from_product([metrics, sel.columns], names=["metric", "column"])
        counted = values.groupby(["metric", "column"])
        stats = counted.agg(mean=("value", "mean"), std=("value", "std"), n=("value", "size"),
                            runs=("runs", "sum")).reindex(cells)
        ci = counted.value.apply(lambda v: pd.Series(mean_ci(v), index=["ci_low", "ci_high"])).unstack()
        stats = stats.join(ci.reindex(cells)) if len(ci.columns) else stats.assign(ci_low=math.nan, ci_high=math.nan)
        bounded = stats.index.get_level_values("metric").map(fraction).to_numpy(bool)  # a t interval knows no bound
        stats.loc[bounded, "ci_low"] = stats.loc[bounded, "ci_low"].clip(lower=0.0)
        stats.loc[bounded, "ci_high"] = stats.loc[bounded, "ci_high"].clip(upper=1.0)
        stats["n"] = stats.n.fillna(0).astype(int)
        stats["repeats"] = (stats.runs.fillna(0) - stats.n).astype(int)
        stats["missing"] = [None if n else why_missing(sel, column) for (_, column), n in zip(stats.index, stats.n)]
        stats = stats[["mean", "std", "n", "repeats", "missing", "ci_low", "ci_high"]]
        if baseline == "best":
            first = stats.loc[metrics[0], "mean"].dropna()
            if first.empty:
                raise ConfigError("baseline", f"no column has a value of {metrics[0]} to pick the best from")
            baseline = first.idxmin() if lower_is_better(metrics[0]) else first.idxmax()
        if baseline is not None:
            if baseline not in sel.columns:
                raise ConfigError("baseline", f"{baseline!r} is not a column (columns: {', '.join(sel.columns)})")
            stats = stats.join(compare_to(values, stats, baseline, metrics, test))
        return cls(stats, sel, labels, digits, baseline, test)

    def cell(self, column: str, row) -> str:
        if not row.n:
            return row.missing if len(row.missing) <= 60 else row.missing[:59] + "…"
        d = self.digits
        n = f"n={row.n}" + (f", {repeats(row.repeats)}" if row.repeats else "")
        if row.n == 1:
            text = f"{row.mean:.{d}f} ({n})"
        else:
            text = f"{row.mean:.{d}f} ± {row.std:.{d}f} ({n}; CI {row.ci_low:.{d}f}–{row.ci_high:.{d}f})"
        if self.baseline is None:
            return text
        if column == self.baseline:
            return f"{text}; baseline"
        if math.isnan(row.p):
            return f"{text}; Δ {row.diff:+.{d}f}, {row.test}"
        mark = "*" if row.p_holm < self.SIGNIFICANCE else ""
        check = "" if math.isnan(row.p_perm) or "permutation" in row.test else f" (perm p={row.p_perm:.3g})"
        return (f"{text}; Δ {row.diff:+.{d}f} [{row.diff_low:+.{d}f}, {row.diff_high:+.{d}f}] "
                f"p={row.p_holm:.3g}{mark}{check}")

    def frame(self) -> pd.DataFrame:
        """The table as strings: a first column of row labels, then one column per setting."""
        text = pd.Series([self.cell(column, row) for (_, column), row in zip(self.stats.index,
                                                                            self.stats.itertuples(index=False))],
                         index=self.stats.index)
        wide = text.unstack("column").reindex(columns=self.sel.columns)
        wide = wide.reindex(list(dict.fromkeys(self.stats.index.get_level_values("metric"))))
        wide.index = [self.labels.get(m, m) for m in wide.index]
        return wide.rename_axis(", ".join(self.sel.keys)).reset_index().rename_axis(columns=None)

    def numbers(self) -> pd.DataFrame:
        """Machine-readable: metric, row label, column label, each key's value, the statistics, missing."""
        keys = self.sel.runs[["column", *(f"key:{k}" for k in self.sel.keys)]].drop_duplicates("column")
        keys.columns = ["column", *self.sel.keys]
        out = self.stats.reset_index().merge(keys, on="column", how="left")
        out.insert(1, "row", out.metric.map(lambda m: self.labels.get(m, m)))
        extra = DIFF if self.baseline is not None else []
        return out[["metric", "row", "column", *self.sel.keys, "mean", "std", "n", "repeats", "ci_low", "ci_high",
                    *extra, "missing"]]

    def notes(self) -> list[str]:
        """One line per run that does not count: its column, id, name and why."""
        runs = self.sel.runs[self.sel.runs.excluded.notna()]
        return [f"{r.column}: run {r.run_id} ({r.get('tags.mlflow.runName', '')}) {r.excluded}"
                for _, r in runs.iterrows()]

    def reruns(self) -> pd.Series:
        """The run ids of each (column, seed) that counted more than one run."""
        runs = self.sel.counted
        if "params.seed" not in runs:
            return pd.Series(dtype=object)
        seeds = runs.dropna(subset=["params.seed"]).groupby(["column", "params.seed"], sort=False).run_id.agg(list)
        return seeds[seeds.map(len) > 1]

    def merged(self) -> list[str]:
        """One line per seed of a column that counted more than one run: their values were averaged."""
        return [f"{column}: seed {seed} ran {len(ids)} times ({', '.join(ids)}), {repeats(len(ids) - 1)}"
                for (column, seed), ids in self.reruns().items()]

    def floor(self) -> str:
        """The smallest p the exact sign-flip test can give, at each number of pairs under SMALL_N in the table."""
        small = sorted(set(self.stats.n[self.stats.p_min.notna()]))
        return (f"; under {SMALL_N} pairs the sign-flip p cannot go below 2/2^n: "
                + ", ".join(f"{n} pairs {2 / 2 ** n:.3g}" for n in small)) if small else ""

    def versus(self) -> str:
        """The caption's account of the differences to the baseline."""
        if self.baseline is None:
            return ""
        flips = f"exact over all 2^n sign flips up to {EXACT_MAX} pairs, else {RANDOM_FLIPS} random flips"
        paired = {"t": "paired t-test, which assumes the differences are roughly normal",
                  "permutation": f"sign-flip permutation test ({flips}; no distribution assumed)",
                  "welch": "Welch's t-test, as if unpaired"}[self.test]
        check = "" if self.test == "permutation" else (
            f"; perm p: the sign-flip permutation test's p over matching seeds ({flips}; no distribution "
            "assumed), uncorrected, as a check")
        return (f"; Δ: difference to {self.baseline} with its 95% CI and p-value (over matching seeds: {paired}; "
                f"otherwise Welch's t-test), Holm-corrected across the columns of each metric; * holds at "
                f"{self.SIGNIFICANCE} after correction{check}{self.floor()}; fewer than {MIN_RUNS} runs a side: "
                "too few runs")

    def caption(self, epoch: str) -> str:
        counted = len(self.sel.counted)
        split = (f"; also split by {', '.join(self.sel.split)}, which differ between runs the asked columns "
                 "would have pooled") if self.sel.split else ""
        reran = sum(len(ids) - 1 for ids in self.reruns())
        merged = f"; {repeats(reran)} into the values of their seeds (listed below)" if reran else ""
        return (f"{counted} of {len(self.sel.runs)} runs; per-epoch metrics at the {epoch} epoch; "
                f"mean ± std over the seeds of one setting, its runs differing only in the seed (n: distinct "
                f"seeds, reruns of a seed averaged into one value as they are not independent samples; CI: t-based "
                f"95% confidence interval of the mean){merged}{split}{self.versus()}")

    def markdown(self, epoch: str) -> str:
        notes = "".join(f"\n- {note}" for note in self.notes())
        merged = "".join(f"\n- {line}" for line in self.merged())
        return (f"{self.caption(epoch)}\n\n{self.frame().to_markdown(index=False)}\n"
                + (f"\nNot counted:{notes}\n" if notes else "") + (f"\nRepeats merged:{merged}\n" if merged else ""))

    def latex(self, epoch: str) -> str:
        """The table for LaTeX, each metric's best mean in bold."""
        frame = self.frame()
        for i, metric in enumerate(dict.fromkeys(self.stats.index.get_level_values("metric"))):
            means = self.stats.loc[metric, "mean"].dropna()
            if len(means) > 1:
                best = means.idxmin() if lower_is_better(metric) else means.idxmax()
                frame.loc[i, best] = f"BOLDSTART{frame.loc[i, best]}BOLDEND"
        caption = re.sub(r"([_%&#$])", r"\\\1", self.caption(epoch)).replace("2^n", "$2^n$")
        latex = frame.to_latex(index=False, escape=True, caption=caption, label="tab:compare")
        return latex.replace("±", r"$\pm$").replace("BOLDSTART", r"\textbf{").replace("BOLDEND", "}").replace(
            "Δ", r"$\Delta$").replace("–", "--")
