"""The training loop: epochs of train + validate, best-val checkpoint, test on the best weights.

It knows nothing of Hydra or MLflow: per-epoch metrics go to an ``on_epoch(epoch, metrics)`` callback,
which may raise to stop training (a sweeper's pruning, say).
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Callable, Iterable, Optional

import torch
from torch import nn
from tqdm import tqdm

from imgexp.train.checkpoint import load, save_atomic
from imgexp.train.metrics import classification_metrics

Batches = Iterable[tuple[torch.Tensor, torch.Tensor]]
EpochCallback = Callable[[int, dict[str, float]], None]


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite."""


@dataclass
class FitResult:
    history: list[dict[str, float]]  # one dict of metrics per epoch, epoch 1 first
    best_epoch: int
    test: dict[str, float]
    test_logits: torch.Tensor
    test_targets: torch.Tensor


def training_loss(
    output: torch.Tensor | tuple[torch.Tensor, ...], y: torch.Tensor, loss_fn: nn.Module, aux_weight: float = 0.3
) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, logits) of a model's train-mode output. A tuple (GoogLeNet's) is (logits, *auxiliary logits):
    the auxiliary losses add to the loss with weight ``aux_weight``."""
    if isinstance(output, tuple):
        logits, *aux = output
        return loss_fn(logits, y) + aux_weight * sum(loss_fn(a, y) for a in aux), logits
    return loss_fn(output, y), output


def train_epoch(
    model: nn.Module,
    batches: Batches,
    loss_fn: nn.Module,
    optimizer: torch.optim.Optimizer,
    desc: str,
    progress: bool,
    aux_weight: float = 0.3,
) -> dict[str, float]:
    model.train()
    loss_fn.train()
    n = 0
    sums: Optional[torch.Tensor] = None  # (loss * n, correct) kept on the device: no sync per batch
    # disable=None: the bar shows on a terminal only, not in logs
    for x, y in tqdm(batches, desc=desc, leave=False, disable=None if progress else True):
        optimizer.zero_grad(set_to_none=True)
        loss, logits = training_loss(model(x), y, loss_fn, aux_weight)
        loss.backward()
        optimizer.step()
        batch_sums = torch.stack([loss.detach() * len(y), (logits.argmax(1) == y).sum().to(loss.dtype)])
        sums = batch_sums if sums is None else sums + batch_sums
        n += len(y)
    total_loss, correct = sums.tolist()
    if not math.isfinite(total_loss):
        raise NonFiniteLossError(f"training loss is {total_loss / n} ({desc})")
    return {"train/loss": total_loss / n, "train/acc": correct / n}


@torch.no_grad()
def predict(model: nn.Module, batches: Batches) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and targets of a whole split, in eval mode."""
    model.eval()
    outputs, targets = zip(*((model(x), y) for x, y in batches))
    return torch.cat(outputs), torch.cat(targets)


def step_scheduler(scheduler, val_loss: float) -> None:
    """One per-epoch step; ReduceLROnPlateau watches val/loss."""
    if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
        scheduler.step(val_loss)
    elif scheduler is not None:
        scheduler.step()


def fit(
    model: nn.Module,
    train: Batches,
    val: Batches,
    test: Batches,
    loss_fn: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Optional[object],
    epochs: int,
    checkpoint_path: str | os.PathLike,
    on_epoch: Optional[EpochCallback] = None,
    topk: int = 2,
    progress: bool = True,
    aux_weight: float = 0.3,
) -> FitResult:
    """Train for ``epochs``; save the state dict whenever val/acc reaches a new best; test that state.
    ``aux_weight`` weighs auxiliary classifiers' losses (see :func:`training_loss`)."""
    history: list[dict[str, float]] = []
    best_acc, best_epoch = -1.0, 0
    for epoch in range(1, epochs + 1):
        metrics = {"train/lr": optimizer.param_groups[0]["lr"]}
        metrics |= train_epoch(model, train, loss_fn, optimizer, f"epoch {epoch}/{epochs}", progress, aux_weight)
        metrics |= getattr(loss_fn, "epoch_metrics", dict)()  # e.g. the center loss's distances
        loss_fn.eval()  # losses with training-only terms report plain validation/test losses
        logits, targets = predict(model, val)
        val_loss = loss_fn(logits, targets).item()
        val_acc = (logits.argmax(1) == targets).float().mean().item()
        if val_acc > best_acc:
            best_acc, best_epoch = val_acc, epoch
            save_atomic(model.state_dict(), checkpoint_path)
        metrics |= {"val/loss": val_loss, "val/acc": val_acc, "val/acc_best": best_acc}
        step_scheduler(scheduler, val_loss)
        history.append(metrics)
        if on_epoch is not None:
            on_epoch(epoch, metrics)

    model.load_state_dict(load(checkpoint_path, map_location=next(model.parameters()).device))
    logits, targets = predict(model, test)
    test_metrics = {"test/loss": loss_fn(logits, targets).item()}
    test_metrics |= classification_metrics(logits, targets, "test", topk)
    return FitResult(history, best_epoch, test_metrics, logits.cpu(), targets.cpu())
