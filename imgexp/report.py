"""A run's last phase (rank 0): its test metrics, per-class tables, learning curves, confusion matrix, the
analysis of its best weights and its MLflow model, into the run; and the summary it ends with."""
from __future__ import annotations

import logging
from typing import Optional

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from imgexp import data as data_lib
from imgexp.build import Job
from imgexp.classifier import Spec
from imgexp.config import ConfigError, as_list
from imgexp.tracking.logged_model import register
from imgexp.tracking.store import REGISTERED_TAG
from imgexp.tracking.tracker import Tracker
from imgexp.train.metrics import confusion_counts, confusion_table, per_class_table

log = logging.getLogger(__name__)


def summary_table(metrics: dict[str, float]) -> str:
    width = max(map(len, metrics))
    return "\n".join(f"  {k:<{width}}  {v:.4f}" for k, v in metrics.items())


def summary(result, epochs: int) -> str:
    """The run's summary: the best epoch's train and val values and the test metrics of its weights, each
    line from that one epoch (not the last one's train values beside the best one's test)."""
    best = result.history[result.best_epoch - 1]
    last = "" if result.best_epoch == len(result.history) else \
        f"; the last epoch's val/acc {result.history[-1]['val/acc']:.4f}"
    if result.stopped_epoch:
        last += f"; stopped early after epoch {result.stopped_epoch}"
    return (f"summary: epoch {result.best_epoch} of {epochs}, the best val/acc, and the test metrics of its "
            f"weights{last}\n"
            f"{summary_table({**best, **result.test})}")


def classifier_spec(cfg: DictConfig, data: data_lib.Data, run_id: Optional[str]) -> Spec:
    """What rebuilds the run's model and prepares its input, for its MLflow model."""
    model = {**OmegaConf.to_container(cfg.model, resolve=True), "pretrained": False, "weights": None}
    info, prep = data.info, data.preprocessing
    return Spec(model, info.channels, (info.height, info.width), tuple(prep.stored), prep.mean, prep.std,
                list(info.class_names), run_id or "")


def input_example(data: data_lib.Data, n: int = 2) -> np.ndarray:
    """The first ``n`` test images as the model sees them, un-normalized: uint8 (n, H, W, C), (n, H, W) for
    1 channel; MLflow saves them as the model's ``serving_input_example.json``."""
    x, _ = next(iter(data.test))
    mean, std = (torch.tensor(v).view(1, -1, 1, 1) for v in (data.preprocessing.mean, data.preprocessing.std))
    images = (x[:n].float().cpu() * std + mean).round().clamp(0, 255).byte().permute(0, 2, 3, 1).numpy()
    return images[..., 0] if images.shape[-1] == 1 else images


def report(cfg: DictConfig, job: Job, tracker: Tracker, result, sample) -> dict[str, float]:
    """Phase 4 (rank 0): test metrics, per-class tables, learning curves, confusion matrix and the analysis
    of the best model, into the run; returns the final metrics."""
    info, model, analysis = job.data.info, job.trainer.model, cfg.analysis
    tracker.log_metrics({**result.test, "val/best_epoch": float(result.best_epoch)}
                        | ({"train/stopped_epoch": float(result.stopped_epoch)} if result.stopped_epoch else {}))
    from imgexp.analysis import confusion_figure, learning_curves_figure  # matplotlib: only after training
    from imgexp.analysis.report import analyse_model, log_artifacts

    counts = confusion_counts(result.test_logits, result.test_targets)  # once, for both tables and the plot
    tracker.log_text(per_class_table(counts, info.class_names).to_csv(index=False), "metrics/per_class.csv")
    confusion = confusion_table(counts, info.class_names)
    tracker.log_text(confusion.to_csv(), "metrics/confusion_matrix.csv")
    log_artifacts(tracker, {"plots/learning_curves.png": learning_curves_figure(result.history),
                            "plots/confusion_matrix.png": confusion_figure(confusion)})
    if sample is not None:  # the model now holds the best checkpoint's weights
        title = f"best epoch {result.best_epoch}, test/acc {result.test['test/acc']:.3f}"
        analyse_model(tracker, model, sample, info.class_names, analysis, title)
    if cfg.tracking.log_model:
        model_uri = tracker.log_model(job.trainer.best_path, classifier_spec(cfg, job.data, tracker.run_id),
                                      input_example(job.data))
        if model_uri and cfg.tracking.register and not cfg.tracking.parent_run_id:  # a sweep registers its best
            tracker.set_tags({REGISTERED_TAG: register(tracker.uri, model_uri, cfg.tracking.register,
                                                       tracker.run_id)})
    if not tracker.model_holds_best:  # else the logged model holds these weights: not uploaded twice
        tracker.log_artifact(job.trainer.best_path, "checkpoints")
    final = {**result.history[-1], **result.test}
    missing = [m for m in as_list(cfg.optimized_metric) if m not in final]
    if missing:
        raise ConfigError("optimized_metric", f"{missing[0]!r} is not among {', '.join(final)}")
    return final
