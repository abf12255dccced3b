"""Test metrics against values worked out by hand."""
from __future__ import annotations

import pytest
import torch

from imgexp.train.metrics import classification_metrics


def test_metrics_on_known_predictions():
    # 4 samples, 3 classes. argmax: [0, 1, 1, 2]; targets: [0, 1, 2, 2].
    logits = torch.tensor([[3.0, 2.0, 1.0], [1.0, 3.0, 2.0], [1.0, 3.0, 2.0], [1.0, 2.0, 3.0]])
    targets = torch.tensor([0, 1, 2, 2])
    m = classification_metrics(logits, targets, "test", topk=2)
    assert m["test/acc"] == pytest.approx(3 / 4)
    assert m["test/top2"] == pytest.approx(4 / 4)  # sample 3's target (2) is its second choice
    # per class F1: class 0: 1; class 1: p=1/2 r=1 -> 2/3; class 2: p=1 r=1/2 -> 2/3
    assert m["test/f1_macro"] == pytest.approx((1 + 2 / 3 + 2 / 3) / 3)


def test_topk_not_reported_when_k_covers_all_classes():
    m = classification_metrics(torch.eye(2), torch.tensor([0, 1]), "test", topk=2)
    assert "test/top2" not in m and m["test/acc"] == 1.0


def test_metrics_match_scikit_learn_on_random_predictions():
    """Our counts against scikit-learn's definitions (zero_division=0), a class never predicted included."""
    from sklearn.metrics import confusion_matrix, f1_score, precision_recall_fscore_support, top_k_accuracy_score

    from imgexp.train.metrics import confusion_counts, confusion_table, per_class_table

    gen = torch.Generator().manual_seed(0)
    logits, targets = torch.randn(300, 6, generator=gen), torch.randint(0, 6, (300,), generator=gen)
    logits[:, 5] -= 100  # class 5: never predicted
    y, pred, labels = targets.numpy(), logits.argmax(1).numpy(), list(range(6))
    m = classification_metrics(logits, targets, "val", topk=3)
    assert m["val/acc"] == pytest.approx((pred == y).mean())
    assert m["val/f1_macro"] == pytest.approx(f1_score(y, pred, labels=labels, average="macro", zero_division=0))
    assert m["val/top3"] == pytest.approx(top_k_accuracy_score(y, logits.numpy(), k=3, labels=labels))
    counts = confusion_counts(logits, targets)
    table = per_class_table(counts, [str(c) for c in labels])
    expected = precision_recall_fscore_support(y, pred, labels=labels, zero_division=0)
    for column, values in zip(("precision", "recall", "f1", "support"), expected):
        assert table[column].tolist() == pytest.approx(list(values))
    assert (confusion_table(counts, [str(c) for c in labels]).to_numpy()
            == confusion_matrix(y, pred, labels=labels)).all()
