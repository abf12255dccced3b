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
