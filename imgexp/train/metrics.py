"""Classification metrics from logits, computed by scikit-learn."""
from __future__ import annotations

import numpy as np
import torch
from sklearn.metrics import accuracy_score, f1_score, top_k_accuracy_score


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
