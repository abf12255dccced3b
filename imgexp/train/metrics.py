"""Classification metrics from logits, computed by scikit-learn."""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from sklearn.metrics import (accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support,
                             top_k_accuracy_score)


def classification_metrics(
    logits: torch.Tensor, targets: torch.Tensor, prefix: str, topk: int = 2
) -> dict[str, float]:
    """``{prefix}/acc``, ``{prefix}/top{k}`` (when k < classes) and ``{prefix}/f1_macro``."""
    scores = logits.float().cpu().numpy()
    y = targets.cpu().numpy()
    labels = np.arange(scores.shape[1])
    pred = scores.argmax(1)
    out = {
        f"{prefix}/acc": float(accuracy_score(y, pred)),
        f"{prefix}/f1_macro": float(f1_score(y, pred, labels=labels, average="macro", zero_division=0)),
    }
    if topk < scores.shape[1]:
        out[f"{prefix}/top{topk}"] = float(top_k_accuracy_score(y, scores, k=topk, labels=labels))
    return out


def per_class_table(logits: torch.Tensor, targets: torch.Tensor, class_names: list[str]) -> pd.DataFrame:
    """Precision, recall, F1 and support per class (one row each)."""
    labels = np.arange(len(class_names))
    p, r, f, n = precision_recall_fscore_support(targets.numpy(), logits.argmax(1).numpy(), labels=labels,
                                                 zero_division=0)
    return pd.DataFrame({"class": class_names, "precision": p, "recall": r, "f1": f, "support": n})


def confusion_table(logits: torch.Tensor, targets: torch.Tensor, class_names: list[str]) -> pd.DataFrame:
    """Counts: rows are true classes, columns predicted ones."""
    cm = confusion_matrix(targets.numpy(), logits.argmax(1).numpy(), labels=np.arange(len(class_names)))
    return pd.DataFrame(cm, index=pd.Index(class_names, name="true"), columns=class_names)
