"""Report D's K-means center loss: cross-entropy plus a pull of each feature towards its class center and
a bounded push between the class centers.

The features are those of one layer (by default the input of the model's last ``nn.Linear``: the
penultimate features), captured by a forward hook, so the training loop only ever calls
``loss(logits, targets)``. The centers come from K-means on a memory of recent training features
(k = number of classes, initialised from the class means, a few Lloyd steps) and are refreshed every
``refresh_steps`` training steps, or at the start of every epoch when ``refresh_steps=0``.

    loss = CE + lambda_intra * mean_i ||f_i - c_{y_i}||^2 / D
              + lambda_inter * mean_{j<k} relu(margin - ||m_j - m_k|| / sqrt(D))

where m_j are the differentiable means of the batch's features per class and D the feature size: the
second term is ``-min(separation, margin)`` up to a constant, a separation that cannot run away. In eval
mode (validation, test) the loss is plain cross-entropy, so ``val/loss`` compares across losses.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn


def class_means(features: torch.Tensor, labels: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(k, D) per-class means (differentiable; zero rows for absent classes) and the present-class mask."""
    counts = torch.bincount(labels, minlength=k)
    sums = features.new_zeros(k, features.shape[1]).index_add(0, labels, features)
    return sums / counts.clamp_min(1).unsqueeze(1).to(features.dtype), counts > 0


def center_stats(features: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """Mean squared distance of features to their class mean (intra), mean squared distance between
    class means (inter), and intra / inter: lower means tighter, better separated classes."""
    means, present = class_means(features.float(), labels, int(labels.max()) + 1)
    intra = (features - means[labels]).pow(2).sum(1).mean()
    inter = torch.pdist(means[present]).pow(2).mean()
    return {"intra": intra.item(), "inter": inter.item(), "ratio": (intra / inter).item()}


def kmeans(features: torch.Tensor, init: torch.Tensor, steps: int) -> torch.Tensor:
    """Lloyd's K-means from ``init`` centers; a center that loses all its points keeps its place."""
    centers = init.clone()
    for _ in range(steps):
        assign = torch.cdist(features, centers).argmin(1)
        counts = torch.bincount(assign, minlength=len(centers)).unsqueeze(1)
        sums = torch.zeros_like(centers).index_add_(0, assign, features)
        centers = torch.where(counts > 0, sums / counts.clamp_min(1), centers)
    return centers


class KMeansCenterLoss(nn.Module):
    def __init__(self, lambda_intra: float = 0.1, lambda_inter: float = 0.1, margin: float = 1.0,
                 layer: Optional[str] = None, refresh_steps: int = 0, memory: int = 4096,
                 kmeans_steps: int = 5, label_smoothing: float = 0.0) -> None:
        super().__init__()
        self.lambda_intra, self.lambda_inter, self.margin = lambda_intra, lambda_inter, margin
        self.layer, self.refresh_steps, self.memory_size, self.kmeans_steps = layer, refresh_steps, memory, kmeans_steps
        self.label_smoothing = label_smoothing
        self.features: Optional[torch.Tensor] = None
        self.centers: Optional[torch.Tensor] = None
        self.memory_x: list[torch.Tensor] = []
        self.memory_y: list[torch.Tensor] = []
        self.steps, self.num_classes = 0, 0

    def attach(self, model: nn.Module) -> None:
        """Hook ``layer`` (default: the last ``nn.Linear``'s input) to capture features on each forward."""
        if self.layer is None:
            name = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)][-1]
            model.get_submodule(name).register_forward_pre_hook(lambda m, args: self._keep(args[0]))
        else:
            model.get_submodule(self.layer).register_forward_hook(lambda m, args, out: self._keep(out))

    def _keep(self, x: torch.Tensor) -> None:
        x = x.float()  # under autocast the layer may run in bf16/fp16; centers and distances stay fp32
        self.features = x.flatten(2).mean(2) if x.ndim > 2 else x  # conv maps: global average pool

    def start_epoch(self) -> None:
        """The trainer's hook at the start of every training epoch: with ``refresh_steps=0`` the centers
        are refreshed."""
        if self.refresh_steps == 0:
            self.refresh()

    def get_extra_state(self) -> dict:
        """Centers, feature memory and step count, so a resumed run continues with the same centers."""
        return {"centers": self.centers, "memory_x": list(self.memory_x), "memory_y": list(self.memory_y),
                "steps": self.steps, "num_classes": self.num_classes}

    def set_extra_state(self, state: dict) -> None:
        self.centers, self.steps, self.num_classes = state["centers"], state["steps"], state["num_classes"]
        self.memory_x, self.memory_y = list(state["memory_x"]), list(state["memory_y"])

    def refresh(self) -> None:
        if not self.memory_y:
            return
        x, y = torch.cat(self.memory_x), torch.cat(self.memory_y)
        means, present = class_means(x, y, self.num_classes)
        if self.centers is not None:  # a class missing from the memory keeps its last center
            means = torch.where(present.unsqueeze(1), means, self.centers)
        self.centers = kmeans(x, means, self.kmeans_steps)

    def _remember(self, f: torch.Tensor, y: torch.Tensor) -> None:
        self.memory_x.append(f.detach())
        self.memory_y.append(y)
        while sum(len(t) for t in self.memory_y) - len(self.memory_y[0]) >= self.memory_size:
            self.memory_x.pop(0)
            self.memory_y.pop(0)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        ce = F.cross_entropy(logits, targets, label_smoothing=self.label_smoothing)
        if not self.training or self.features is None:
            return ce
        f, self.num_classes = self.features, logits.shape[1]
        self._remember(f, targets)
        self.steps += 1
        if self.centers is None or (self.refresh_steps and self.steps % self.refresh_steps == 0):
            self.refresh()
        d = f.shape[1]
        intra = (f - self.centers[targets]).pow(2).sum(1).mean() / d
        means, present = class_means(f, targets, self.num_classes)
        inter = F.relu(self.margin - torch.pdist(means[present]) / d**0.5).mean() if present.sum() > 1 else 0.0
        return ce + self.lambda_intra * intra + self.lambda_inter * inter

    def epoch_metrics(self) -> dict[str, float]:
        """Center statistics of the feature memory, logged each epoch as ``train/center_*``."""
        if not self.memory_y:
            return {}
        stats = center_stats(torch.cat(self.memory_x), torch.cat(self.memory_y))
        return {f"train/center_{k}": v for k, v in stats.items()}
