"""The learning-rate schedule of a run: an optional linear warmup, then any torch scheduler stepped after
every epoch or every optimizer step."""
from __future__ import annotations

from typing import Optional

import torch


class Schedule:
    """Warmup for ``warmup_steps`` optimizer steps (learning rate ``base * k / warmup_steps`` at step k),
    then ``scheduler`` from its start: stepped after each step (``interval="step"``) or after each epoch
    that had no warmup step in it (``"epoch"``; ReduceLROnPlateau gets ``val/loss``)."""

    def __init__(self, optimizer: torch.optim.Optimizer, scheduler: Optional[object], interval: str = "epoch",
                 warmup_steps: int = 0) -> None:
        self.optimizer, self.scheduler, self.interval, self.warmup_steps = optimizer, scheduler, interval, warmup_steps
        self.base_lrs = [g["lr"] for g in optimizer.param_groups]
        self.steps = 0  # optimizer steps taken
        self.warmed_this_epoch = False
        if warmup_steps:
            self._scale(1 / warmup_steps)

    @property
    def constant(self) -> bool:
        """Whether the learning rate never changes (no scheduler, no warmup)."""
        return self.scheduler is None and not self.warmup_steps

    @property
    def warming_up(self) -> bool:
        return self.steps < self.warmup_steps

    def _scale(self, factor: float) -> None:
        for group, base in zip(self.optimizer.param_groups, self.base_lrs):
            group["lr"] = base * factor

    def after_step(self) -> None:
        if self.warming_up:
            self.steps += 1
            self.warmed_this_epoch = True
            self._scale(min(1.0, (self.steps + 1) / self.warmup_steps))
            return
        self.steps += 1
        if self.interval == "step" and self.scheduler is not None:
            self.scheduler.step()

    def after_epoch(self, val_loss: float) -> None:
        warmed, self.warmed_this_epoch = self.warmed_this_epoch, False
        if self.interval != "epoch" or self.scheduler is None or warmed:
            return
        if isinstance(self.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            self.scheduler.step(val_loss)
        else:
            self.scheduler.step()

    def state_dict(self) -> dict:
        return {"steps": self.steps, "warmed_this_epoch": self.warmed_this_epoch,
                "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None}

    def load_state_dict(self, state: dict) -> None:
        self.steps, self.warmed_this_epoch = state["steps"], state["warmed_this_epoch"]
        if self.scheduler is not None:
            self.scheduler.load_state_dict(state["scheduler"])
