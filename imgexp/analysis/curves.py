"""Learning curves: train and val accuracy and loss per epoch."""
from __future__ import annotations

import pandas as pd
import seaborn as sns
from matplotlib.ticker import MaxNLocator

from imgexp.analysis.pyplot import plt


def learning_curves_figure(history: list[dict[str, float]]):
    rows = [
        {"epoch": epoch, "split": split, "metric": metric, "value": m[f"{split}/{metric}"]}
        for epoch, m in enumerate(history, start=1)
        for split in ("train", "val")
        for metric in ("acc", "loss")
    ]
    df = pd.DataFrame(rows)
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, metric in zip(axes, ("acc", "loss")):
        sns.lineplot(df[df.metric == metric], x="epoch", y="value", hue="split", marker="o", ax=ax)
        ax.set(title=metric, ylabel=metric, xlim=(0.8, len(history) + 0.2))
        if len(history) <= 10:  # whole epochs: MaxNLocator(integer=True) gives 0.8-1.2 for one epoch
            ax.set_xticks(range(1, len(history) + 1))
        else:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.tight_layout()
    return fig
