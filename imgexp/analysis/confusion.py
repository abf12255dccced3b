"""Confusion matrix of the test split as a heat map."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import seaborn as sns  # noqa: E402
from sklearn.metrics import confusion_matrix  # noqa: E402


def confusion_figure(targets: np.ndarray, predictions: np.ndarray, class_names: list[str]):
    cm = confusion_matrix(targets, predictions, labels=np.arange(len(class_names)))
    size = max(4.0, 0.5 * len(class_names) + 2)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    sns.heatmap(cm, annot=len(class_names) <= 20, fmt="d", cmap="Blues", cbar=False,
                xticklabels=class_names, yticklabels=class_names, ax=ax)
    ax.set(xlabel="predicted", ylabel="true", title="test confusion matrix")
    fig.tight_layout()
    return fig
