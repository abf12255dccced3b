"""Aggregation: each counted run's value of each metric (best or last epoch), mean ± std (n) per
(metric, column), and the reason for every empty cell; pandas renders it as Markdown, CSV and LaTeX."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import pandas as pd

from imgexp.compare.select import Selection
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
    rows = [(run.run_id, run.column, m, metric_value(sel, run, m, epoch)) for _, run in counted.iterrows()
            for m in metrics]
    return pd.DataFrame(rows, columns=["run_id", "column", "metric", "value"])


def why_missing(sel: Selection, column: str) -> str:
    runs = sel.runs[sel.runs.column == column]
    reasons = list(dict.fromkeys(runs.excluded.dropna()))
    if runs.excluded.isna().any():
        reasons.insert(0, "not logged")
    return "; ".join(reasons)


@dataclass
class Table:
    """``stats``: one row per (metric, column) with ``mean``, ``std``, ``n`` and ``missing`` (why n is 0)."""

    stats: pd.DataFrame
    sel: Selection
    labels: dict[str, str]
    digits: int

    @classmethod
    def build(cls, sel: Selection, values: pd.DataFrame, metrics: list[str], labels: dict[str, str],
              digits: int) -> "Table":
        cells = pd.MultiIndex.from_product([metrics, sel.columns], names=["metric", "column"])
        stats = (values.dropna(subset=["value"]).groupby(["metric", "column"]).value
                 .agg(["mean", "std", "count"]).rename(columns={"count": "n"}).reindex(cells))
        stats["n"] = stats.n.fillna(0).astype(int)
        stats["missing"] = [None if n else why_missing(sel, column) for (_, column), n in zip(stats.index, stats.n)]
        return cls(stats, sel, labels, digits)

    def cell(self, mean: float, std: float, n: int, missing: Optional[str]) -> str:
        if not n:
            return missing if len(missing) <= 60 else missing[:59] + "…"
        d = self.digits
        return f"{mean:.{d}f} ± {std:.{d}f} (n={n})" if n > 1 else f"{mean:.{d}f} (n=1)"

    def frame(self) -> pd.DataFrame:
        """The table as strings: a first column of row labels, then one column per setting."""
        text = pd.Series([self.cell(*row) for row in self.stats.itertuples(index=False)], index=self.stats.index)
        wide = text.unstack("column").reindex(columns=self.sel.columns)
        wide = wide.reindex(list(dict.fromkeys(self.stats.index.get_level_values("metric"))))
        wide.index = [self.labels.get(m, m) for m in wide.index]
        return wide.rename_axis(", ".join(self.sel.keys)).reset_index().rename_axis(columns=None)

    def numbers(self) -> pd.DataFrame:
        """Machine-readable: metric, row label, column label, each key's value, mean, std, n, missing."""
        keys = self.sel.runs[["column", *(f"key:{k}" for k in self.sel.keys)]].drop_duplicates("column")
        keys.columns = ["column", *self.sel.keys]
        out = self.stats.reset_index().merge(keys, on="column", how="left")
        out.insert(1, "row", out.metric.map(lambda m: self.labels.get(m, m)))
        return out[["metric", "row", "column", *self.sel.keys, "mean", "std", "n", "missing"]]

    def notes(self) -> list[str]:
        """One line per run that does not count: its column, id, name and why."""
        runs = self.sel.runs[self.sel.runs.excluded.notna()]
        return [f"{r.column}: run {r.run_id} ({r.get('tags.mlflow.runName', '')}) {r.excluded}"
                for _, r in runs.iterrows()]

    def caption(self, epoch: str) -> str:
        counted = len(self.sel.counted)
        split = (f"; also split by {', '.join(self.sel.split)}, which differ between runs the asked columns "
                 "would have pooled") if self.sel.split else ""
        return (f"{counted} of {len(self.sel.runs)} runs; per-epoch metrics at the {epoch} epoch; "
                f"mean ± std over runs of one setting, differing only in the seed (n runs){split}")

    def markdown(self, epoch: str) -> str:
        notes = "".join(f"\n- {note}" for note in self.notes())
        return (f"{self.caption(epoch)}\n\n{self.frame().to_markdown(index=False)}\n"
                + (f"\nNot counted:{notes}\n" if notes else ""))

    def latex(self, epoch: str) -> str:
        latex = self.frame().to_latex(index=False, escape=True, caption=self.caption(epoch), label="tab:compare")
        return latex.replace("±", r"$\pm$")
