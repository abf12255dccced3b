"""The training engine. A :class:`Trainer` owns one run's training state (model, optimizer, schedule, loss,
gradient scaler, EMA, RNG and loader positions, epoch, best value, history), checkpoints it atomically after
every epoch (``last.pt``) and when asked to stop (:meth:`Trainer.request_stop`), and continues from such a
checkpoint as if nothing had happened. It knows nothing of Hydra or MLflow: per-epoch metrics go to an
``on_epoch(epoch, metrics)`` callback, which may raise to stop training (a sweeper's pruning, say).

Over several ranks (``ranks``) the model trains in DistributedDataParallel, each rank on its part of every
batch; the ranks agree after every step on whether to stop, metrics are totals over all ranks, evaluation
gathers every rank's rows, and rank 0 alone writes checkpoints (with every rank's RNG and loader state) and
runs ``on_epoch``, whose raising stops every rank. Optional hooks: the loss's ``start_epoch()`` /
``epoch_metrics()`` (the K-means center loss), the model's ``auxiliary_loss(targets)`` (GoogLeNet's heads).
"""
from __future__ import annotations

import logging
import math
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Optional

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm import tqdm

from imgexp.checkpoint import load, save_atomic
from imgexp.train.metrics import classification_metrics, epoch_line
from imgexp.train.ranks import Ranks
from imgexp.train.rng import rng_state, set_rng_state
from imgexp.train.schedule import Schedule
from imgexp.train.stopping import NonFiniteLossError, StoppedByRankZero, TrainingInterrupted, early_stop

Batches = Iterable[tuple[torch.Tensor, torch.Tensor]]
EpochCallback = Callable[[int, dict[str, float]], None]
log = logging.getLogger(__name__)
NAN_CHECK_STEPS = 50  # the training loss is checked for NaN/inf (one host sync) every this many steps
DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
CHECKPOINT_FORMAT = 1
# A test hook: each epoch lasts at least this long (tests that need training to outlast a signal, such as the
# SLURM requeue test, size it in seconds whatever the machine's load); 0 in real runs.
MIN_EPOCH_S = float(os.environ.get("IMGEXP_TEST_MIN_EPOCH_S", "0"))


@dataclass
class FitResult:
    history: list[dict[str, float]]  # one dict of metrics per epoch, epoch 1 first
    best_epoch: int
    test: dict[str, float]
    test_logits: torch.Tensor
    test_targets: torch.Tensor
    stopped_epoch: Optional[int] = None  # early stopping ended training after this epoch


class Trainer:
    """Train ``model`` on ``train`` for ``epochs``, validate on ``val`` after each epoch, keep the weights
    with the best val/acc in ``checkpoint_dir/best.pt`` (the EMA weights, when ``ema`` > 0), and test them.

    ``precision``: fp32, or autocast to bf16 / fp16 (fp16 with a gradient scaler, CUDA only);
    ``channels_last``: NHWC model and batches; ``compile``: ``torch.compile`` the model; ``grad_clip``: max
    gradient norm (0: off); ``ema``: decay of an ``AveragedModel`` of the weights (0: off); ``early_stop``:
    (patience, metric): stop once ``metric`` (a ``train/`` or ``val/`` one; lower is better for a loss) has
    not improved for ``patience`` epochs (0: never); ``ranks``: this process's place among the run's ranks
    (``train``/``val``/``test`` then yield this rank's share).
    """

    def __init__(self, model: nn.Module, loss_fn: nn.Module, optimizer: torch.optim.Optimizer, schedule: Schedule,
                 train: Batches, val: Batches, test: Batches, *, epochs: int, checkpoint_dir: str | Path,
                 precision: str = "fp32", channels_last: bool = False, compile: bool = False,
                 grad_clip: float = 0.0, ema: float = 0.0, topk: int = 2, progress: bool = True,
                 early_stop: tuple[int, str] = (0, "val/acc"), ranks: Ranks = Ranks()) -> None:
        self.device = next(model.parameters()).device
        if precision == "fp16" and self.device.type != "cuda":
            raise ValueError(f"precision fp16 needs CUDA (a gradient scaler), not {self.device.type}: use bf16")
        self.memory_format = torch.channels_last if channels_last else torch.preserve_format
        self.model = model.to(memory_format=self.memory_format)
        self.loss_fn, self.optimizer, self.schedule = loss_fn, optimizer, schedule
        self.train, self.val, self.test = train, val, test
        self.epochs, self.topk, self.grad_clip, self.ranks = epochs, topk, grad_clip, ranks
        self.progress = progress and ranks.main
        self.checkpoint_dir = Path(checkpoint_dir)
        self.dtype = DTYPES[precision]
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=precision == "fp16")
        self.ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(ema), use_buffers=True) if ema else None
        self.evaluated = self.ema.module if self.ema is not None else self.model  # the weights val/test see
        trained = self.model
        if ranks.world > 1:
            trained = DistributedDataParallel(model, device_ids=[self.device.index] if self.device.index is not None
                                              else None)
        self.forward = torch.compile(trained) if compile else trained
        self.best_state: Optional[dict] = None  # ranks but 0 keep the best weights here, not in best.pt
        self.eval_forward = torch.compile(self.evaluated) if compile else self.evaluated
        self.params = [p for p in model.parameters() if p.requires_grad]
        # progress of the run
        self.epoch, self.best_acc, self.best_epoch = 0, -1.0, 0
        self.early_stop = early_stop
        self.history: list[dict[str, float]] = []
        self.partial: Optional[dict] = None  # an interrupted epoch's sums so far
        self.extra: dict = {}  # the caller's, saved in every checkpoint (e.g. the tracking run id)
        self.stop_signal: Optional[int] = None
        self._rng: Optional[dict] = None  # restored RNG state, applied when training continues

    @property
    def last_path(self) -> Path:
        return self.checkpoint_dir / "last.pt"

    @property
    def best_path(self) -> Path:
        return self.checkpoint_dir / "best.pt"

    def request_stop(self, signum: int) -> None:
        """Stop after the current step: save ``last.pt`` and raise :class:`TrainingInterrupted`."""
        self.stop_signal = signum

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict:
        """Everything to continue the run; every rank calls it (rank 0's holds each rank's RNG and loader)."""
        own = {"loader": self.train.state_dict() if hasattr(self.train, "state_dict") else None, "rng": rng_state()}
        ranks = self.ranks.objects(own) if self.ranks.world > 1 else None
        return {
            "format": CHECKPOINT_FORMAT, "epoch": self.epoch, "best_acc": self.best_acc,
            "best_epoch": self.best_epoch, "history": self.history, "partial": self.partial, "extra": self.extra,
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "schedule": self.schedule.state_dict(), "scaler": self.scaler.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None, "loss": self.loss_fn.state_dict(),
            **own, "ranks": ranks,
        }

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.best_acc, self.best_epoch = state["epoch"], state["best_acc"], state["best_epoch"]
        self.history, self.partial, self.extra = list(state["history"]), state["partial"], dict(state["extra"])
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["schedule"])
        self.scaler.load_state_dict(state["scaler"])
        if self.ema is not None:
            self.ema.load_state_dict(state["ema"])
        self.loss_fn.load_state_dict(state["loss"])
        ranks = state.get("ranks") or []
        own = ranks[self.ranks.rank] if len(ranks) == self.ranks.world else state  # else: rank 0's
        if self.partial is not None and not self.ranks.main:  # rank 0's holds the interrupted epoch's totals
            self.partial = {**self.partial, "sums": torch.zeros_like(self.partial["sums"]), "seen": 0}
        if own["loader"] is not None:
            self.train.load_state_dict(own["loader"])
        self._rng = own["rng"]

    def save(self) -> None:
        state = self.state_dict()
        if self.ranks.main:
            save_atomic(state, self.last_path)

    def _stop(self, where: str) -> None:
        self.save()
        raise TrainingInterrupted(self.stop_signal or signal.SIGTERM, where, self.last_path)  # or: another rank's

    # ------------------------------------------------------------------ steps
    def _autocast(self):
        return torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype is not None)

    def step(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """One optimizer step; returns (loss * n, correct) on the device, no host sync."""
        x = x.contiguous(memory_format=self.memory_format)
        with self._autocast():
            logits = self.forward(x)
            loss = self.loss_fn(logits, y)
            auxiliary = getattr(self.model, "auxiliary_loss", None)
            if auxiliary is not None:
                loss = loss + auxiliary(y)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if self.grad_clip:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.params, self.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if self.ema is not None:
            self.ema.update_parameters(self.model)
        self.schedule.after_step()
        return torch.stack([loss.detach().float() * len(y), (logits.argmax(1) == y).sum().float()])

    def train_epoch(self, epoch: int) -> dict[str, float]:
        """One pass over ``train`` (the rest of it, when resuming mid-epoch)."""
        self.model.train()
        self.loss_fn.train()
        if self.partial is None:
            self.partial = {"sums": torch.zeros(2, device=self.device), "seen": 0,
                            "lr": self.optimizer.param_groups[0]["lr"]}
            if hasattr(self.loss_fn, "start_epoch"):
                self.loss_fn.start_epoch()
        sums, seen = self.partial["sums"].to(self.device), self.partial["seen"]
        start, started_at = time.perf_counter(), seen
        desc = f"epoch {epoch}/{self.epochs}"
        for step, (x, y) in enumerate(tqdm(self.train, desc=desc, leave=False, disable=None if self.progress else True),
                                      start=1):
            sums = sums + self.step(x, y)
            seen += len(y)
            if step % NAN_CHECK_STEPS == 0 and not torch.isfinite(self.ranks.sum(sums)[0]):
                raise NonFiniteLossError(f"training loss is not finite in the first {step} steps of {desc}")
            if self.ranks.any(self.stop_signal is not None):  # every rank stops after the same step
                totals = self.ranks.sum(torch.cat([sums, sums.new_tensor([seen])]))
                self.partial |= {"sums": totals[:2], "seen": int(totals[2].item())}
                self._stop(f"in {desc}, after {self.partial['seen']} images")
        total_loss, correct, seen, started_at = self.ranks.sum(
            torch.cat([sums, torch.tensor([seen, started_at], device=sums.device, dtype=sums.dtype)])).tolist()
        if not math.isfinite(total_loss):
            raise NonFiniteLossError(f"training loss is {total_loss / seen} ({desc})")
        lr, self.partial = self.partial["lr"], None
        speed = (seen - started_at) / max(time.perf_counter() - start, 1e-9)
        return {"train/lr": lr, "train/loss": total_loss / seen, "train/acc": correct / seen,
                "time/images_per_s": speed}

    @torch.no_grad()
    def predict(self, batches: Batches) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits (fp32) and targets of a whole split (every rank's rows, each once), in eval mode, with the
        evaluated weights (rank 0's buffers)."""
        self.ranks.copy_buffers(self.evaluated)
        self.evaluated.eval()
        outputs, targets = [], []
        with self._autocast():
            for x, y in batches:
                outputs.append(self.eval_forward(x.contiguous(memory_format=self.memory_format)).float())
                targets.append(y)
        return self.ranks.gather_rows(torch.cat(outputs)), self.ranks.gather_rows(torch.cat(targets))

    # ------------------------------------------------------------------ the run
    def _keep_best(self) -> None:
        """Rank 0 writes ``best.pt``; the other ranks keep the same weights in memory."""
        if self.ranks.main:
            save_atomic(self.evaluated.state_dict(), self.best_path)
        else:
            self.best_state = {k: v.detach().clone() for k, v in self.evaluated.state_dict().items()}

    def _after_epoch(self, on_epoch: Optional[EpochCallback], epoch: int, metrics: dict[str, float]) -> None:
        """Call ``on_epoch``; when it raises (on rank 0, the only one given it), every rank stops."""
        error = None
        if on_epoch is not None:
            try:
                on_epoch(epoch, metrics)
            except Exception as err:  # noqa: BLE001 - re-raised below, once the other ranks know
                error = err
        stop = self.ranks.share(None if error is None else (str(error), getattr(error, "run_status", None)))
        if stop is not None:
            raise error or StoppedByRankZero(f"rank 0 stopped the run after epoch {epoch}: {stop[0]}", stop[1])

    def fit(self, on_epoch: Optional[EpochCallback] = None) -> FitResult:
        """Train the remaining epochs, then test the best weights (loaded into ``model``). When another rank
        dies, raises :class:`RankLost` (the run is resumable from ``last.pt``)."""
        try:
            return self._fit(on_epoch)
        except RuntimeError as err:
            self.ranks.raise_if_lost(err)
            raise

    def _fit(self, on_epoch: Optional[EpochCallback]) -> FitResult:
        if self._rng is not None:
            set_rng_state(self._rng)
            self._rng = None
        while self.epoch < self.epochs and not self.stalled():
            epoch = self.epoch + 1
            start = time.perf_counter()
            metrics = self.train_epoch(epoch)
            metrics |= getattr(self.loss_fn, "epoch_metrics", dict)()  # e.g. the center loss's distances
            self.loss_fn.eval()  # losses with training-only terms report plain validation/test losses
            logits, targets = self.predict(self.val)
            val_loss = self.loss_fn(logits, targets).item()
            val_acc = (logits.argmax(1) == targets).float().mean().item()
            if val_acc > self.best_acc:
                self.best_acc, self.best_epoch = val_acc, epoch
                self._keep_best()
            metrics |= {"val/loss": val_loss, "val/acc": val_acc, "val/acc_best": self.best_acc,
                        "time/epoch_s": time.perf_counter() - start}
            log.info(epoch_line(epoch, self.epochs, metrics))
            self.schedule.after_epoch(val_loss)
            self.history.append({k: v for k, v in metrics.items() if not k.startswith("time/")})  # repeatable
            self.epoch = epoch
            self.save()
            self._after_epoch(on_epoch, epoch, metrics)
            time.sleep(max(0.0, MIN_EPOCH_S - (time.perf_counter() - start)))
            if self.ranks.any(self.stop_signal is not None):
                self._stop(f"after epoch {epoch}/{self.epochs}")

        if self.ranks.any(self.best_state is None and not self.best_path.exists()):  # rank 0's disk is elsewhere
            self.best_state = self.ranks.share(load(self.best_path) if self.ranks.main else None)  # (nodes, resumed)
        best = self.best_state or load(self.best_path, map_location=self.device)
        self.model.load_state_dict(best)  # the caller's model ends with the best weights
        if self.ema is not None:
            self.evaluated.load_state_dict(best)
        self.loss_fn.eval()
        logits, targets = self.predict(self.test)
        test_metrics = {"test/loss": self.loss_fn(logits, targets).item()}
        test_metrics |= classification_metrics(logits, targets, "test", self.topk)
        stopped = self.epoch if self.epoch < self.epochs else None
        return FitResult(self.history, self.best_epoch, test_metrics, logits.cpu(), targets.cpu(), stopped)

    def stalled(self) -> bool:
        """Whether early stopping ends training now (:func:`~imgexp.train.stopping.early_stop`)."""
        return early_stop(self.history, *self.early_stop)
