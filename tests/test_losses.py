"""Report D's K-means center loss: tighter, better separated classes than cross-entropy, at no real cost."""
from __future__ import annotations

import statistics

import pytest
import torch

from imgexp.analysis import layer_features
from imgexp.losses.kmeans_center import KMeansCenterLoss, center_stats, kmeans
from imgexp.build import build


def train_digits(compose_cfg, tmp_path, loss: str, seed: int):
    cfg = compose_cfg(f"loss={loss}", "epochs=10", f"seed={seed}", "device=cpu", "tracking=none", "progress=false")
    job = build(cfg, tmp_path / f"{loss}-{seed}")
    result = job.trainer.fit()
    features, labels = layer_features(job.trainer.model, ["5"], job.data.test)  # small_cnn: the last Linear's input
    return result, center_stats(torch.from_numpy(features["5"]), torch.from_numpy(labels))


SEEDS = range(5)


@pytest.mark.slow
def test_center_loss_tightens_classes_on_digits(compose_cfg, tmp_path):
    """An effect on average over seeds: one seed can go the other way (seed 0 does in NHWC on a CPU: 0.0695
    against cross-entropy's 0.0633), so the claim is the mean ratio over 5 seeds and a majority of them."""
    ce = [train_digits(compose_cfg, tmp_path, "cross_entropy", seed) for seed in SEEDS]
    km = [train_digits(compose_cfg, tmp_path, "kmeans_center", seed) for seed in SEEDS]
    ce_ratio, km_ratio = ([stats["ratio"] for _, stats in runs] for runs in (ce, km))
    assert statistics.mean(km_ratio) < statistics.mean(ce_ratio), (km_ratio, ce_ratio)
    assert sum(k < c for k, c in zip(km_ratio, ce_ratio)) >= 3, (km_ratio, ce_ratio)
    ce_acc, km_acc = ([result.test["test/acc"] for result, _ in runs] for runs in (ce, km))
    assert statistics.mean(km_acc) >= statistics.mean(ce_acc) - 0.02
    for key in ("train/center_intra", "train/center_inter", "train/center_ratio"):
        assert all(key in epoch for epoch in km[0][0].history)
    assert "train/center_ratio" not in ce[0][0].history[0]


def test_kmeans_recovers_separated_clusters():
    g = torch.Generator().manual_seed(0)
    centers = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    labels = torch.arange(3).repeat_interleave(50)
    x = centers[labels] + torch.randn(150, 2, generator=g)
    found = kmeans(x, centers + 2.0, steps=10)
    assert torch.allclose(found, centers, atol=0.5)


def test_loss_is_cross_entropy_in_eval_mode_and_adds_center_terms_in_training():
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    loss = KMeansCenterLoss(lambda_intra=1.0, lambda_inter=1.0, margin=10.0)
    loss.attach(model)
    x, y = torch.randn(12, 4), torch.arange(3).repeat(4)
    logits = model(x)
    ce = torch.nn.functional.cross_entropy(logits, y)
    assert loss(logits, y).item() > ce.item()  # training: intra distance and the margin hinge add to it
    loss.eval()
    assert loss(model(x), y).item() == pytest.approx(ce.item())
    stats = loss.epoch_metrics()
    assert stats["train/center_ratio"] == pytest.approx(stats["train/center_intra"] / stats["train/center_inter"])
