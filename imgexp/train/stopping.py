"""How training ends before its last epoch: a signal (saved, resumable), another rank's stop, a loss that is no
longer finite, or early stopping, which is decided from the epoch history alone, so identically on every rank
and after a resume."""
from __future__ import annotations

import logging
import signal
from pathlib import Path
from typing import Optional

log = logging.getLogger(__name__)


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite."""


class StoppedByRankZero(Exception):
    """Ends ranks other than 0 when rank 0's ``on_epoch`` stopped the run (pruning, a failed callback), with
    rank 0's ``run_status`` (``pruned``), so a node without rank 0 ends its job as rank 0's does."""

    def __init__(self, message: str, run_status: Optional[str] = None) -> None:
        super().__init__(message)
        self.run_status = run_status


class TrainingInterrupted(KeyboardInterrupt):
    """Training stopped on request (SIGTERM, SIGUSR1, Ctrl-C) after saving ``last.pt``; resumable."""

    run_status = "interrupted"

    def __init__(self, signum: int, where: str, checkpoint: Path) -> None:
        super().__init__(f"stopped by {signal.Signals(signum).name} {where}; state saved in {checkpoint}")
        self.signum, self.checkpoint = signum, checkpoint
        self.exit_code = 128 + signum
        self.chain = None  # the signal's earlier handler, to call once the run is closed (see signals.py)


def early_stop(history: list[dict[str, float]], patience: int, metric: str) -> bool:
    """Whether the monitored ``metric``'s best epoch (lower is better for a loss) is ``patience`` epochs back in
    ``history`` (0: never stop early)."""
    if not patience or not history:
        return False
    values = [h.get(metric) for h in history]
    if values[-1] is None:
        raise ValueError(f"trainer.early_stop_metric: {metric!r} is not among the epoch's metrics "
                         f"({', '.join(history[-1])})")
    best = values.index((min if "loss" in metric else max)(values))  # the first epoch that reached it
    if len(values) - 1 - best < patience:
        return False
    log.info("early stop after epoch %d: %s has not improved on epoch %d's %.4f for %d epochs",
             len(history), metric, best + 1, values[best], patience)
    return True
