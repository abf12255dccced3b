"""Confusion matrix of the test split as a heat map."""
from __future__ import annotations

import pandas as pd
import seaborn as sns

from imgexp.analysis.pyplot import plt


def confusion_figure(table: pd.DataFrame):
    """``table``: counts, rows true classes and columns predicted ones (``train.metrics.confusion_table``)."""
    names = list(table.columns)
    size = max(4.0, 0.5 * len(names) + 2)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    sns.heatmap(table.to_numpy(), annot=len(names) <= 20, fmt="d", cmap="Blues", cbar=False,
                xticklabels=names, yticklabels=names, ax=ax)
    ax.set(xlabel="predicted", ylabel="true", title="test confusion matrix")
    fig.tight_layout()
    return fig
