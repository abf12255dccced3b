"""One training job: config -> build (data, model, loss, optimizer) -> fit -> tracking -> return the metric."""
from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from imgexp import data as data_lib
from imgexp import losses
from imgexp.analysis import confusion_figure, learning_curves_figure
from imgexp.analysis.report import Artifacts, final_artifacts, tsne_artifacts
from imgexp.data.split import stratified_subset
from imgexp.config import ConfigError, as_list, validate
from imgexp.models import create_model
from imgexp.optim import build_optimizer, build_scheduler
from imgexp.tracking import start_run
from imgexp.tracking.sweep import SWEEPER_KEYS
from imgexp.tracking.trial import trial_reporter
from imgexp.train import fit
from imgexp.train.metrics import confusion_table, per_class_table

log = logging.getLogger(__name__)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("device", f"{name!r} asked for, but torch sees no CUDA device")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.backends.cudnn.benchmark = False


def flat_params(cfg: DictConfig) -> dict[str, object]:
    """The resolved config as ``{"optimizer.lr": 0.001, ...}`` for MLflow params (``_partial_`` left out)."""
    out: dict[str, object] = {}

    def walk(node: object, prefix: str) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, f"{prefix}{k}.")
        elif not prefix.endswith("._partial_."):
            out[prefix[:-1]] = node

    walk(OmegaConf.to_container(cfg, resolve=True), "")
    return out


def summary_table(metrics: dict[str, float]) -> str:
    width = max(map(len, metrics))
    return "\n".join(f"  {k:<{width}}  {v:.4f}" for k, v in metrics.items())


@dataclass
class Job:
    """Everything one training run is built from."""

    data: data_lib.Data
    model: torch.nn.Module
    loss_fn: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Optional[object]


def build(cfg: DictConfig) -> Job:
    """Validate ``cfg``, seed, and build data, model, loss, optimizer and scheduler from it."""
    validate(cfg)
    seed_everything(cfg.seed)
    device = resolve_device(cfg.device)
    data = data_lib.build(cfg.data, cfg.augmentation, cfg.normalization, cfg.batch, cfg.seed, device)
    model = create_model(cfg.model, data.info).to(device)
    optimizer = build_optimizer(cfg.optimizer, [p for p in model.parameters() if p.requires_grad])
    return Job(data, model, losses.build(cfg.loss, model), optimizer, build_scheduler(cfg.scheduler, optimizer))


def analysis_sample(batches, points: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A fixed stratified sample of ``points`` (model-ready) images of a split, for the analysis plots."""
    xs, ys = zip(*batches)
    x, y = torch.cat(xs), torch.cat(ys)
    keep = torch.from_numpy(stratified_subset(y.cpu().numpy(), points, seed)).to(y.device)
    return x[keep], y[keep]


def log_artifacts(tracker, artifacts: Artifacts) -> None:
    """Figures as PNGs, text (HTML) as files; every figure closed."""
    for path, item in artifacts.items():
        if isinstance(item, str):
            tracker.log_text(item, path)
        else:
            tracker.log_figure(item, path)
            plt.close(item)


def run(cfg: DictConfig, output_dir: str | Path, overrides: Sequence[str] = ()) -> float | list[float]:
    """Train one model as ``cfg`` says, log it, and return ``cfg.optimized_metric`` (a list of values
    when it names several metrics). Everything from validation on happens inside the MLflow run, so a
    failing job leaves a FAILED run with its error."""
    checkpoint = Path(output_dir) / "checkpoints" / "best.pt"
    asked = [o for o in overrides if not o.startswith(SWEEPER_KEYS)]
    tags = {"imgexp.overrides": " ".join(asked), "imgexp.model": cfg.model.name, "imgexp.data": cfg.data.name}
    if cfg.trial.number is not None:
        tags["imgexp.trial"] = str(cfg.trial.number)
    run_name = cfg.tracking.run_name or f"{cfg.model.name}-{cfg.data.name}"
    metrics = as_list(cfg.optimized_metric)
    with start_run(cfg.tracking.enabled, cfg.tracking.uri, cfg.tracking.experiment, run_name,
                   flat_params(cfg), tags, cfg.tracking.parent_run_id) as tracker:
        job = build(cfg)
        data, model = job.data, job.model
        n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
        info = data.info
        log.info("%s on %s (%dx%dx%d, %d classes): %d trainable parameters, device %s", cfg.model.name,
                 cfg.data.name, info.channels, info.height, info.width, info.num_classes, n_params,
                 next(model.parameters()).device)
        tracker.log_text(OmegaConf.to_yaml(cfg, resolve=True), "config.yaml")
        tracker.log_metrics({"model/params": float(n_params)})
        analysis = cfg.analysis
        sample = analysis_sample(data.test, analysis.points, cfg.seed) if analysis.tsne or analysis.cam else None
        best = {"acc": -1.0}
        report_to_trial = trial_reporter(cfg.trial, metrics[0])

        def on_epoch(epoch: int, metrics: dict[str, float]) -> None:
            tracker.log_epoch(epoch, metrics)
            if analysis.tsne and analysis.tsne_at_best and metrics["val/acc"] > best["acc"]:
                title = f"epoch {epoch}, val/acc {metrics['val/acc']:.3f}"
                log_artifacts(tracker, tsne_artifacts(model, *sample, info.class_names, analysis,
                                                      f"epoch{epoch:03d}", title, three_d=False))
            best["acc"] = max(best["acc"], metrics["val/acc"])
            if report_to_trial:
                report_to_trial(epoch, metrics)

        result = fit(model, data.train, data.val, data.test, job.loss_fn, job.optimizer, job.scheduler, cfg.epochs,
                     checkpoint, on_epoch=on_epoch, topk=cfg.topk, progress=cfg.progress)
        tracker.log_metrics({**result.test, "val/best_epoch": float(result.best_epoch)})
        tracker.log_artifact(checkpoint, "checkpoints")
        tracker.log_text(per_class_table(result.test_logits, result.test_targets, info.class_names)
                         .to_csv(index=False), "metrics/per_class.csv")
        tracker.log_text(confusion_table(result.test_logits, result.test_targets, info.class_names).to_csv(),
                         "metrics/confusion_matrix.csv")
        plots: Artifacts = {
            "plots/learning_curves.png": learning_curves_figure(result.history),
            "plots/confusion_matrix.png": confusion_figure(
                result.test_targets.numpy(), result.test_logits.argmax(1).numpy(), info.class_names),
        }
        if sample is not None:  # the model now holds the best checkpoint's weights
            title = f"best epoch {result.best_epoch}, test/acc {result.test['test/acc']:.3f}"
            plots |= final_artifacts(model, *sample, info.class_names, analysis, title)
        log_artifacts(tracker, plots)
        final = {**result.history[-1], **result.test}
        missing = [m for m in metrics if m not in final]
        if missing:
            raise ConfigError("optimized_metric", f"{missing[0]!r} is not among {', '.join(final)}")

    log.info("summary (best epoch %d of %d)%s\n%s", result.best_epoch, cfg.epochs,
             f", MLflow run {tracker.run_id}" if tracker.run_id else "", summary_table(final))
    values = [final[m] for m in metrics]
    return values[0] if isinstance(cfg.optimized_metric, str) else values
