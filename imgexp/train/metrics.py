"""Classification metrics from logits: accuracy, top-k, F1 and the confusion matrix, all counted from one
confusion matrix (scikit-learn's definitions with ``zero_division=0``, without importing it: a second of
every run's start-up). A class without true samples (no test images) has no recall or F1 (NaN) and is
left out of the macro F1, which averages over the classes present in the targets."""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch


def confusion_counts(logits: torch.Tensor, targets: torch.Tensor) -> np.ndarray:
    """(classes, classes) counts: rows are true classes, columns predicted ones."""
    n = logits.shape[1]
    pred = logits.argmax(1).cpu().numpy()
    return np.bincount(targets.cpu().numpy() * n + pred, minlength=n * n).reshape(n, n)


def ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """``num / den``, 0 where ``den`` is 0."""
    return np.divide(num, den, out=np.zeros(len(num)), where=den > 0)


def per_class(cm: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Precision, recall, F1 and support of each class; recall and F1 NaN where the support is 0."""
    tp, predicted, support = np.diag(cm), cm.sum(0), cm.sum(1)
    defined = np.where(support > 0, 1.0, np.nan)  # no true samples: no recall, no F1
    recall, f1 = ratio(tp, support) * defined, ratio(2 * tp, predicted + support) * defined
    return ratio(tp, predicted), recall, f1, support


def classification_metrics(
    logits: torch.Tensor, targets: torch.Tensor, prefix: str, topk: int = 2
) -> dict[str, float]:
    """``{prefix}/acc``, ``{prefix}/top{k}`` (when k < classes) and ``{prefix}/f1_macro`` (over the classes
    present in ``targets``: scikit-learn's ``f1_score(average="macro", labels=<those>)``)."""
    cm = confusion_counts(logits, targets)
    out = {f"{prefix}/acc": float(np.trace(cm) / cm.sum()),
           f"{prefix}/f1_macro": float(np.nanmean(per_class(cm)[2]))}
    if topk < logits.shape[1]:
        top = logits.float().topk(topk, dim=1).indices.cpu()
        out[f"{prefix}/top{topk}"] = float((top == targets.cpu()[:, None]).any(1).float().mean())
    return out


def per_class_table(cm: np.ndarray, class_names: list[str]) -> pd.DataFrame:
    """Precision, recall, F1 and support per class (one row each) from :func:`confusion_counts`; a class
    with support 0 keeps its row, its recall and F1 empty (NaN)."""
    p, r, f, n = per_class(cm)
    return pd.DataFrame({"class": class_names, "precision": p, "recall": r, "f1": f, "support": n})


def confusion_table(cm: np.ndarray, class_names: list[str]) -> pd.DataFrame:
    """:func:`confusion_counts` labelled: rows are true classes, columns predicted ones."""
    return pd.DataFrame(cm, index=pd.Index(class_names, name="true"), columns=class_names)


def epoch_line(epoch: int, epochs: int, m: dict[str, float]) -> str:
    """One log line per epoch, for logs without a progress bar (nohup, SLURM, docker)."""
    return (f"epoch {epoch}/{epochs}: train loss {m['train/loss']:.4f} acc {m['train/acc']:.4f} | val loss "
            f"{m['val/loss']:.4f} acc {m['val/acc']:.4f} | lr {m['train/lr']:.3g} | {m['time/epoch_s']:.1f} s, "
            f"{m['time/images_per_s']:.0f} images/s")
