"""One training job: config -> build (data, model, loss, optimizer, trainer) -> fit -> tracking -> return the
metric; or the continuation of an interrupted one (``resume=``)."""
from __future__ import annotations

import logging
import os
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Optional, Sequence

import torch
from omegaconf import DictConfig, OmegaConf

from imgexp import data as data_lib
from imgexp import losses
from imgexp.data.split import stratified_subset
from imgexp.checkpoint import temp_files
from imgexp.config import ConfigError, as_list, config_hash, flatten, reuse_mode, validate
from imgexp.models import create_model
from imgexp.optim import build_optimizer, build_scheduler
from imgexp.redact import mask_container
from imgexp.runtime import configure_torch, resolve_device, seed_everything
from imgexp.tracking import resume, reuse, start_run
from imgexp.tracking.mlflow import CHECKPOINT_DIR_TAG, CONFIG_HASH_TAG
from imgexp.tracking.sweep import SWEEPER_KEYS
from imgexp.tracking.trial import join_trial
from imgexp.train import Schedule, Trainer, TrainingInterrupted
from imgexp.train.metrics import confusion_counts, confusion_table, per_class_table
from imgexp.train.signals import stop_on_signals

log = logging.getLogger(__name__)

if TYPE_CHECKING:  # the plotting modules are imported after training: matplotlib, seaborn, pandas
    from imgexp.analysis.report import Artifacts  # and scikit-learn cost the start of every run seconds


def flat_params(cfg: DictConfig) -> dict[str, object]:
    """The resolved config as ``{"optimizer.lr": 0.001, ...}`` for MLflow params (``_partial_`` left out)."""
    return {k: v for k, v in flatten(OmegaConf.to_container(cfg, resolve=True)).items()
            if not k.endswith("._partial_")}


def summary_table(metrics: dict[str, float]) -> str:
    width = max(map(len, metrics))
    return "\n".join(f"  {k:<{width}}  {v:.4f}" for k, v in metrics.items())


@dataclass
class Job:
    """Everything one training run is built from."""

    data: data_lib.Data
    trainer: Trainer


def build(cfg: DictConfig, checkpoint_dir: str | Path) -> Job:
    """Seed, and build data, model, loss, optimizer, schedule and trainer from a validated ``cfg``."""
    seed_everything(cfg.seed)
    device = resolve_device(cfg.device)
    configure_torch(cfg.trainer, device)
    data = data_lib.build(cfg.data, cfg.augmentation, cfg.normalization, cfg.batch, cfg.seed, device)
    if cfg.topk > data.info.num_classes:
        raise ConfigError("topk", f"{cfg.topk} is more than the data's {data.info.num_classes} classes")
    model = create_model(cfg.model, data.info).to(device)
    optimizer = build_optimizer(cfg.optimizer, [p for p in model.parameters() if p.requires_grad])
    t, steps_per_epoch = cfg.trainer, len(data.train)
    warmup = t.warmup_steps or t.warmup_epochs * steps_per_epoch
    length = {"step": cfg.epochs * steps_per_epoch - warmup, "epoch": cfg.epochs - -(-warmup // steps_per_epoch)}
    scheduler = build_scheduler(cfg.scheduler, optimizer, length[cfg.scheduler.interval])
    trainer = Trainer(model, losses.build(cfg.loss, model), optimizer,
                      Schedule(optimizer, scheduler, cfg.scheduler.interval, warmup),
                      data.train, data.val, data.test, epochs=cfg.epochs, checkpoint_dir=checkpoint_dir,
                      precision=t.precision, channels_last=t.channels_last, compile=t.compile,
                      grad_clip=t.grad_clip, ema=t.ema, topk=cfg.topk, progress=cfg.progress)
    return Job(data, trainer)


def analysis_sample(batches, points: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A fixed stratified sample of ``points`` (model-ready) images of a split, for the analysis plots."""
    xs, ys = zip(*batches)
    x, y = torch.cat(xs), torch.cat(ys)
    keep = torch.from_numpy(stratified_subset(y.cpu().numpy(), points, seed)).to(y.device)
    return x[keep], y[keep]


def log_artifacts(tracker, artifacts: Artifacts) -> None:
    """Figures as PNGs, text (HTML) as files; every figure closed."""
    from imgexp.analysis.pyplot import plt

    for path, item in artifacts.items():
        if isinstance(item, str):
            tracker.log_text(item, path)
        else:
            tracker.log_figure(item, path)
            plt.close(item)


def resume_hint(err: TrainingInterrupted, overrides: Sequence[str], target: str) -> None:
    """Add to the interruption's message the command that continues the run."""
    again = " ".join([o for o in overrides if not o.startswith("resume=")] + [f"resume={target}"])
    err.args = (f"{err.args[0]}; continue with: python -m imgexp {again}",)


def run(cfg: DictConfig, output_dir: str | Path, overrides: Sequence[str] = ()) -> float | list[float]:
    """Train one model as ``cfg`` says, log it, and return ``cfg.optimized_metric`` (a list of values
    when it names several metrics). A bad config value stops it before the tracking store is opened (a
    sweep's job records it as a FAILED child); everything from building the data on happens inside the
    MLflow run, so a failing job leaves a FAILED run with its error. ``cfg.resume`` continues an earlier
    run instead, with exactly the config that run was started with."""
    output_dir = Path(output_dir).resolve()
    asked = [o for o in overrides if not o.startswith(SWEEPER_KEYS)]
    run_name = cfg.tracking.run_name or cfg.tracking.job_name or f"{cfg.model.name}-{cfg.data.name}"
    tags = {"imgexp.overrides": " ".join(asked), "imgexp.model": cfg.model.name, "imgexp.data": cfg.data.name}
    if cfg.trial.number is not None:
        tags["imgexp.trial"] = str(cfg.trial.number)

    def open_run(params: dict[str, object], tags: dict[str, str], run_id: Optional[str] = None):
        return start_run(cfg.tracking.enabled, cfg.tracking.uri, cfg.tracking.experiment, run_name, params, tags,
                         cfg.tracking.parent_run_id, run_id, output_dir / "mlflow_spool", cfg.tracking.offline_wait_s)

    try:
        validate(cfg)  # before the tracking store is opened: a typo costs a second
    except ConfigError:
        if cfg.tracking.enabled and cfg.tracking.parent_run_id:  # a sweep records its failed jobs
            with open_run({}, tags):
                raise
        raise
    digest = config_hash(cfg)
    tags[CONFIG_HASH_TAG] = digest
    metrics = as_list(cfg.optimized_metric)
    wanted = cfg.resume
    if wanted is None and int(os.environ.get("SLURM_RESTART_COUNT", "0")) > 0 and cfg.tracking.enabled:
        log.info("a requeued SLURM job: resume=auto")
        wanted = "auto"
    if wanted is None and cfg.tracking.enabled and cfg.tracking.parent_run_id and reuse_mode(cfg.reuse) != "false":
        reused = reuse.reuse_finished(cfg.tracking, digest, reuse_mode(cfg.reuse), metrics, run_name, tags)
        if reused is not None:
            values = [reused.data.metrics[m] for m in metrics]
            return values[0] if isinstance(cfg.optimized_metric, str) else values
        wanted = "auto"  # a sweep job continues an interrupted run of its config
    staged = output_dir / "checkpoints" / "resumed"  # until the run id names the run's own folder
    resumed = resume.prepare(wanted, cfg, digest, staged) if wanted else None
    if resumed is not None:  # the run keeps the config hash and overrides it was started with
        tags = {k: v for k, v in tags.items() if k not in (CONFIG_HASH_TAG, "imgexp.overrides")}
    with open_run(flat_params(cfg), tags, resumed.run_id if resumed else None) as tracker:
        # every run's checkpoints in a folder of its own, named by its MLflow run id
        checkpoint_dir = output_dir / "checkpoints" / (tracker.run_id or f"local-{uuid.uuid4().hex[:12]}")
        for leftover in temp_files(checkpoint_dir, "*.pt"):  # a requeued job's own folder: a kill mid-write
            leftover.unlink()
        if resumed is not None:  # a requeued SLURM job finds its run's folder there already: merge into it
            checkpoint_dir.mkdir(parents=True, exist_ok=True)
            for f in staged.iterdir():
                f.replace(checkpoint_dir / f.name)
            staged.rmdir()
        tracker.set_tags({CHECKPOINT_DIR_TAG: str(checkpoint_dir)})
        resume.discard_origin(resumed and resumed.point, checkpoint_dir)
        job = build(cfg, checkpoint_dir)
        data, trainer = job.data, job.trainer
        model, info = trainer.model, job.data.info
        if resumed is not None:
            trainer.load_state_dict(resumed.state)
            log.info("resuming %s after epoch %d of %d%s", resumed.point.source, trainer.epoch, cfg.epochs,
                     f" and {trainer.partial['seen']} images of the next" if trainer.partial else "")
        trainer.extra = {"run_id": tracker.run_id, "config_hash": digest,
                         "config": mask_container(OmegaConf.to_container(cfg, resolve=True))}  # no password
        n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
        log.info("%s on %s (%dx%dx%d, %d classes): %d trainable parameters, device %s, %s", cfg.model.name,
                 cfg.data.name, info.channels, info.height, info.width, info.num_classes, n_params,
                 trainer.device, cfg.trainer.precision)
        if resumed is None:  # a resumed run keeps the config it was started with
            tracker.log_text(OmegaConf.to_yaml(cfg, resolve=True), "config.yaml")
            tracker.log_metrics({"model/params": float(n_params)})
        analysis = cfg.analysis
        sample = analysis_sample(data.test, analysis.points, cfg.seed) if analysis.tsne or analysis.cam else None
        report_to_trial = join_trial(cfg.trial, metrics[0], checkpoint_dir)
        logged = tracker.last_logged_epoch()
        for epoch, past in enumerate(trainer.history, start=1):  # a resumed run: what is not logged yet
            if epoch > logged:
                tracker.log_epoch(epoch, past)
            if report_to_trial:
                report_to_trial(epoch, past, may_prune=False)

        def on_epoch(epoch: int, metrics: dict[str, float]) -> None:
            new_best = trainer.best_epoch == epoch  # the loop has just saved best.pt
            tracker.log_artifact(trainer.last_path, "checkpoints")  # before the metrics: see resume.py
            if new_best:
                tracker.log_artifact(trainer.best_path, "checkpoints")
            constant = trainer.schedule.constant and epoch > 1  # a constant learning rate: logged once
            tracker.log_epoch(epoch, {k: v for k, v in metrics.items() if not (constant and k == "train/lr")})
            if analysis.tsne and analysis.tsne_at_best and new_best:
                from imgexp.analysis.report import tsne_artifacts

                title = f"epoch {epoch}, val/acc {metrics['val/acc']:.3f}"
                log_artifacts(tracker, tsne_artifacts(trainer.evaluated, *sample, info.class_names, analysis,
                                                      f"epoch{epoch:03d}", title, three_d=False))
            if report_to_trial:
                report_to_trial(epoch, metrics)

        try:
            with stop_on_signals(trainer):
                result = trainer.fit(on_epoch)
        except TrainingInterrupted as err:
            resume_hint(err, asked, tracker.run_id or str(Path(output_dir).resolve()))
            raise
        tracker.log_metrics({**result.test, "val/best_epoch": float(result.best_epoch)})
        tracker.log_artifact(trainer.best_path, "checkpoints")
        from imgexp.analysis import confusion_figure, learning_curves_figure
        from imgexp.analysis.report import final_artifacts

        counts = confusion_counts(result.test_logits, result.test_targets)  # once, for both tables and the plot
        tracker.log_text(per_class_table(counts, info.class_names).to_csv(index=False), "metrics/per_class.csv")
        confusion = confusion_table(counts, info.class_names)
        tracker.log_text(confusion.to_csv(), "metrics/confusion_matrix.csv")
        plots: Artifacts = {
            "plots/learning_curves.png": learning_curves_figure(result.history),
            "plots/confusion_matrix.png": confusion_figure(confusion),
        }
        if sample is not None:  # the model now holds the best checkpoint's weights
            title = f"best epoch {result.best_epoch}, test/acc {result.test['test/acc']:.3f}"
            log.info("analysis (%s) of the best model on %d test images...", analysis.name, len(sample[1]))
            start = time.perf_counter()
            plots |= final_artifacts(model, *sample, info.class_names, analysis, title)
            log.info("analysis done in %.1f s", time.perf_counter() - start)
        log_artifacts(tracker, plots)
        final = {**result.history[-1], **result.test}
        missing = [m for m in metrics if m not in final]
        if missing:
            raise ConfigError("optimized_metric", f"{missing[0]!r} is not among {', '.join(final)}")

    if tracker.stored(checkpoint_dir):  # the checkpoints are in MLflow: not kept twice on this disk
        shutil.rmtree(checkpoint_dir, ignore_errors=True)
    log.info("summary (best epoch %d of %d)\n%s", result.best_epoch, cfg.epochs, summary_table(final))
    log.info("results: output directory %s; %s", output_dir, tracker.where())
    values = [final[m] for m in metrics]
    return values[0] if isinstance(cfg.optimized_metric, str) else values
