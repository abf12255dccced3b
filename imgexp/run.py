"""One training job, in phases: where the run starts from (a FINISHED run to reuse, an interrupted one to
resume, or nothing), build (data, model, loss, optimizer, trainer), train, report; then return the metric.
A job runs as one process or as several ranks (:mod:`imgexp.launch`); every rank goes through the phases,
rank 0 alone deciding where the run starts, talking to MLflow and the trial, and writing checkpoints."""
from __future__ import annotations

import logging
import os
import shutil
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Optional, Sequence

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from imgexp import data as data_lib
from imgexp import launch, losses
from imgexp.data.split import stratified_subset
from imgexp.checkpoint import load, temp_files
from imgexp.classifier import Spec
from imgexp.config import ConfigError, as_list, config_hash, flatten, reuse_mode, validate
from imgexp.gpus import claim_gpus
from imgexp.models import create_model
from imgexp.optim import build_optimizer, build_scheduler
from imgexp.redact import mask_container
from imgexp.runtime import configure_torch, resolve_device, seed_everything, uses_channels_last
from imgexp.tracking import resume, reuse, start_run
from imgexp.tracking.logged_model import REGISTERED_TAG, register
from imgexp.tracking.mlflow import CHECKPOINT_DIR_TAG, CONFIG_HASH_TAG, Tracker
from imgexp.tracking.sweep import SWEEPER_KEYS
from imgexp.tracking.trial import join_trial
from imgexp.train import Schedule, Trainer, TrainingInterrupted
from imgexp.train.metrics import confusion_counts, confusion_table, per_class_table
from imgexp.train.ranks import Ranks
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


@dataclass
class Job:
    """Everything one training run is built from."""

    data: data_lib.Data
    trainer: Trainer


def build(cfg: DictConfig, checkpoint_dir: str | Path, device: Optional[torch.device] = None,
          ranks: Ranks = Ranks()) -> Job:
    """Seed, and build data, model, loss, optimizer, schedule and trainer from a validated ``cfg``, for rank
    ``ranks.rank`` of the run on ``device`` (default: ``cfg.device``'s)."""
    device = device or resolve_device(cfg.device)
    seed_everything(cfg.seed)
    configure_torch(cfg.trainer, device)
    shard = data_lib.Shard(ranks.rank, ranks.world)
    data = data_lib.build(cfg.data, cfg.augmentation, cfg.normalization, cfg.batch, cfg.seed, device, shard)
    if cfg.topk > data.info.num_classes:
        raise ConfigError("topk", f"{cfg.topk} is more than the data's {data.info.num_classes} classes")
    model = create_model(cfg.model, data.info)
    t = cfg.trainer
    if ranks.world > 1 and (t.sync_bn or (t.sync_bn is None and device.type == "cuda")):
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model = model.to(device)
    optimizer = build_optimizer(cfg.optimizer, [p for p in model.parameters() if p.requires_grad])
    steps_per_epoch = len(data.train)
    warmup = t.warmup_steps or t.warmup_epochs * steps_per_epoch
    length = {"step": cfg.epochs * steps_per_epoch - warmup, "epoch": cfg.epochs - -(-warmup // steps_per_epoch)}
    scheduler = build_scheduler(cfg.scheduler, optimizer, length[cfg.scheduler.interval])
    trainer = Trainer(model, losses.build(cfg.loss, model), optimizer,
                      Schedule(optimizer, scheduler, cfg.scheduler.interval, warmup),
                      data.train, data.val, data.test, epochs=cfg.epochs, checkpoint_dir=checkpoint_dir,
                      precision=t.precision, channels_last=uses_channels_last(t, device), compile=t.compile,
                      grad_clip=t.grad_clip, ema=t.ema, topk=cfg.topk, progress=cfg.progress,
                      early_stop=(t.early_stop_patience, t.early_stop_metric), ranks=ranks)
    return Job(data, trainer)


def analysis_sample(batches, points: int, seed: int, ranks: Ranks = Ranks()) -> tuple[torch.Tensor, torch.Tensor]:
    """A fixed stratified sample of ``points`` (model-ready) images of a split, for the analysis plots: each
    rank's share of its rows, gathered."""
    xs, ys = zip(*batches)
    x, y = torch.cat(xs), torch.cat(ys)
    share = round(points * len(y) / sum(ranks.objects(len(y))))
    keep = torch.from_numpy(stratified_subset(y.cpu().numpy(), share, seed)).to(y.device)
    return ranks.gather_rows(x[keep]), ranks.gather_rows(y[keep])


def classifier_spec(cfg: DictConfig, data: data_lib.Data, run_id: Optional[str]) -> Spec:
    """What rebuilds the run's model and prepares its input, for its MLflow model."""
    model = {**OmegaConf.to_container(cfg.model, resolve=True), "pretrained": False, "weights": None}
    info, prep = data.info, data.preprocessing
    return Spec(model, info.channels, (info.height, info.width), tuple(prep.stored), prep.mean, prep.std,
                list(info.class_names), run_id or "")


def input_example(data: data_lib.Data, n: int = 2) -> np.ndarray:
    """The first ``n`` test images as the model sees them, un-normalized: uint8 (n, H, W, C)."""
    x, _ = next(iter(data.test))
    mean, std = (torch.tensor(v).view(1, -1, 1, 1) for v in (data.preprocessing.mean, data.preprocessing.std))
    return (x[:n].float().cpu() * std + mean).round().clamp(0, 255).byte().permute(0, 2, 3, 1).numpy()


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


def returned(cfg: DictConfig, final: dict[str, float]) -> float | list[float]:
    """What the job returns to a sweeper: ``cfg.optimized_metric``'s value, or the list of them."""
    values = [final[m] for m in as_list(cfg.optimized_metric)]
    return values[0] if isinstance(cfg.optimized_metric, str) else values


# ---------------------------------------------------------------- the job
def run(cfg: DictConfig, output_dir: str | Path, overrides: Sequence[str] = ()) -> float | list[float]:
    """Train one model as ``cfg`` says, log it, and return ``cfg.optimized_metric`` (a list of values
    when it names several metrics). A bad config value stops it before the tracking store is opened (a
    sweep's job records it as a FAILED child); everything from building the data on happens inside the
    MLflow run, so a failing job leaves a FAILED run with its error. ``cfg.resume`` continues an earlier
    run instead, with exactly the config that run was started with. The job claims its GPUs (see
    :mod:`imgexp.gpus`) and runs as ``trainer.devices`` ranks, or as the SLURM step's tasks."""
    output_dir = Path(output_dir).resolve()
    try:
        validate(cfg)  # before the tracking store is opened: a typo costs a second
        world = launch.world_size(cfg)
    except ConfigError:
        # a sweep records its failed jobs (once: by a SLURM job's first task)
        if cfg.tracking.enabled and cfg.tracking.parent_run_id and launch.first_task():
            with start_run(cfg.tracking.enabled, cfg.tracking.uri, cfg.tracking.experiment, run_name_of(cfg), {},
                           Start.of(cfg, overrides).tags, cfg.tracking.parent_run_id,
                           spool_dir=output_dir / "mlflow_spool", offline_wait_s=cfg.tracking.offline_wait_s):
                raise
        raise
    if launch.is_rank():  # a task of a SLURM job step: SLURM started the ranks
        launch.join_slurm_step(output_dir)
        device = launch.rank_device(cfg.device, [], int(os.environ["LOCAL_RANK"]))
        ranks = Ranks.join("nccl" if device.type == "cuda" else "gloo")
        try:
            return run_rank(cfg, output_dir, overrides, ranks, device)
        finally:
            ranks.leave()
    claimed = world if cfg.device in ("auto", "cuda") else 0  # device=cuda:N pins; cpu and mps claim nothing
    with claim_gpus(claimed, cfg.jobs_per_gpu) as gpus:
        if world > 1:
            return launch.launch_ranks(run_rank, cfg, output_dir, overrides, world, gpus)
        device = resolve_device(f"cuda:{gpus[0]}" if gpus and torch.cuda.is_available() else cfg.device)
        return run_rank(cfg, output_dir, overrides, Ranks(), device, gpus)


def run_name_of(cfg: DictConfig) -> str:
    return cfg.tracking.run_name or cfg.tracking.job_name or f"{cfg.model.name}-{cfg.data.name}"


@dataclass
class Start:
    """Where a run starts from (rank 0 decides): its tags, its config hash, and either the values of a
    FINISHED run it reuses, or the interrupted run it continues, or neither (a new run)."""

    tags: dict[str, str]
    digest: str = ""
    values: Any = None  # a reused run's: the job returns them without training
    resumed: Optional[resume.Resumed] = None

    @classmethod
    def of(cls, cfg: DictConfig, overrides: Sequence[str]) -> "Start":
        asked = [o for o in overrides if not o.startswith(SWEEPER_KEYS)]
        tags = {"imgexp.overrides": " ".join(asked), "imgexp.model": cfg.model.name, "imgexp.data": cfg.data.name}
        if cfg.trial.number is not None:
            tags["imgexp.trial"] = str(cfg.trial.number)
        return cls(tags)

    def shared(self) -> dict:
        """What the other ranks need of it (not the resumed state: they read it from the checkpoint)."""
        return {"values": self.values, "resumed": self.resumed is not None, "digest": self.digest}


def starting_point(cfg: DictConfig, output_dir: Path, overrides: Sequence[str]) -> Start:
    """Phase 1 (rank 0): reuse a FINISHED run of the config (sweeps), or find the run to resume
    (``resume=``, a requeued SLURM job, a sweep job whose config was interrupted), or start anew."""
    start = Start.of(cfg, overrides)
    start.digest = config_hash(cfg)
    start.tags[CONFIG_HASH_TAG] = start.digest
    metrics = as_list(cfg.optimized_metric)
    wanted = cfg.resume
    if wanted is None and int(os.environ.get("SLURM_RESTART_COUNT", "0")) > 0 and cfg.tracking.enabled:
        log.info("a requeued SLURM job: resume=auto")
        wanted = "auto"
    if wanted is None and cfg.tracking.enabled and cfg.tracking.parent_run_id and reuse_mode(cfg.reuse) != "false":
        reused = reuse.reuse_finished(cfg.tracking, start.digest, reuse_mode(cfg.reuse), metrics, run_name_of(cfg),
                                      start.tags)
        if reused is not None:
            start.values = returned(cfg, reused.data.metrics)
            return start
        wanted = "auto"  # a sweep job continues an interrupted run of its config
    asked = cfg.resume is not None or int(os.environ.get("SLURM_RESTART_COUNT", "0")) > 0
    start.resumed = resume.prepare(wanted, cfg, start.digest, staged_dir(output_dir), asked) if wanted else None
    if start.resumed is not None:  # the run keeps the config hash and overrides it was started with
        start.tags = {k: v for k, v in start.tags.items() if k not in (CONFIG_HASH_TAG, "imgexp.overrides")}
    return start


def staged_dir(output_dir: Path) -> Path:
    return output_dir / "checkpoints" / "resumed"  # until the run id names the run's own folder


@contextmanager
def tracking(cfg: DictConfig, start: Start, output_dir: Path, ranks: Ranks) -> Iterator[tuple[Tracker, Path]]:
    """Phase 2: rank 0 opens (or reopens) the MLflow run and gives the run its checkpoint folder, named by the
    run id, with a resumed run's checkpoints moved in; the other ranks get a tracker that records nothing,
    and the same folder."""
    if not ranks.main:
        yield Tracker(), Path(ranks.share(None))
        return
    resumed = start.resumed
    with start_run(cfg.tracking.enabled, cfg.tracking.uri, cfg.tracking.experiment, run_name_of(cfg),
                   flat_params(cfg), start.tags, cfg.tracking.parent_run_id, resumed.run_id if resumed else None,
                   output_dir / "mlflow_spool", cfg.tracking.offline_wait_s, cfg.tracking.checkpoints) as tracker:
        checkpoint_dir = output_dir / "checkpoints" / (tracker.run_id or f"local-{uuid.uuid4().hex[:12]}")
        for leftover in temp_files(checkpoint_dir, "*.pt"):  # a requeued job's own folder: a kill mid-write
            leftover.unlink()
        if resumed is not None:  # a requeued SLURM job finds its run's folder there already: merge into it
            staged = staged_dir(output_dir)
            checkpoint_dir.mkdir(parents=True, exist_ok=True)
            for f in staged.iterdir():
                f.replace(checkpoint_dir / f.name)
            staged.rmdir()
        tracker.set_tags({CHECKPOINT_DIR_TAG: str(checkpoint_dir)})
        resume.discard_origin(resumed and resumed.point, checkpoint_dir)
        ranks.share(str(checkpoint_dir))
        yield tracker, checkpoint_dir


def run_rank(cfg: DictConfig, output_dir: Path, overrides: Sequence[str], ranks: Ranks, device: torch.device,
             gpus: Sequence[int] = ()) -> float | list[float]:
    """The job's phases on one rank (the only one, or one of several)."""
    if ranks.world > 1:
        asked = [o for o in overrides if not o.startswith(SWEEPER_KEYS)]
        log.info("rank %d of %d (pid %d) on %s: %s", ranks.rank, ranks.world, os.getpid(), device,
                 " ".join(asked) or "(no overrides)")
    start = starting_point(cfg, output_dir, overrides) if ranks.main else None
    shared = ranks.share(start.shared() if start else None)
    if shared["values"] is not None:
        return shared["values"]
    with tracking(cfg, start or Start({}), output_dir, ranks) as (tracker, checkpoint_dir):
        if gpus:
            tracker.set_tags({"imgexp.gpus": ",".join(map(str, gpus))})
        job = build(cfg, checkpoint_dir, device, ranks)
        tracker.log_datasets(job.data.records)
        if shared["resumed"]:
            state = start.resumed.state if start else load(checkpoint_dir / "last.pt")
            job.trainer.load_state_dict(state)
            log.info("resuming %s after epoch %d of %d%s", start.resumed.point.source if start else checkpoint_dir,
                     job.trainer.epoch, cfg.epochs,
                     f" and {job.trainer.partial['seen']} images of the next" if job.trainer.partial else "")
        job.trainer.extra = {"run_id": tracker.run_id, "config_hash": shared["digest"],
                             "config": mask_container(OmegaConf.to_container(cfg, resolve=True))}  # no password
        result, sample = train(cfg, job, tracker, checkpoint_dir, shared["resumed"], overrides, output_dir)
        final = report(cfg, job, tracker, result, sample) if ranks.main else {**result.history[-1], **result.test}
    if ranks.main and tracker.stored(checkpoint_dir):  # the checkpoints are in MLflow: not kept twice on this disk
        shutil.rmtree(checkpoint_dir, ignore_errors=True)
    if ranks.main:
        log.info("%s", summary(result, cfg.epochs))
        log.info("results: output directory %s; %s", output_dir, tracker.where())
    return returned(cfg, final)


def train(cfg: DictConfig, job: Job, tracker: Tracker, checkpoint_dir: Path, resumed: bool,
          overrides: Sequence[str], output_dir: Path):
    """Phase 3: log what the run is, replay a resumed run's unlogged epochs, and fit, logging every epoch
    (rank 0) and answering the trial; returns the fit's result and the analysis sample."""
    trainer, info, ranks = job.trainer, job.data.info, job.trainer.ranks
    n_params = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    log.info("%s on %s (%dx%dx%d, %d classes): %d trainable parameters, device %s, %s%s", cfg.model.name,
             cfg.data.name, info.channels, info.height, info.width, info.num_classes, n_params, trainer.device,
             cfg.trainer.precision, f", {ranks.world} ranks" if ranks.world > 1 else "")
    if not resumed:  # a resumed run keeps the config it was started with
        tracker.log_text(OmegaConf.to_yaml(cfg, resolve=True), "config.yaml")
        tracker.log_metrics({"model/params": float(n_params)})
    analysis = cfg.analysis
    sample = analysis_sample(job.data.test, analysis.points, cfg.seed, ranks) if analysis.tsne or analysis.cam \
        else None
    metrics = as_list(cfg.optimized_metric)
    report_to_trial = join_trial(cfg.trial, metrics[0], checkpoint_dir) if ranks.main else None
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
            return trainer.fit(on_epoch if ranks.main else None), sample
    except TrainingInterrupted as err:
        asked = [o for o in overrides if not o.startswith(SWEEPER_KEYS)]
        resume_hint(err, asked, tracker.run_id or str(output_dir))
        raise


def report(cfg: DictConfig, job: Job, tracker: Tracker, result, sample) -> dict[str, float]:
    """Phase 4 (rank 0): test metrics, per-class tables, learning curves, confusion matrix and the analysis
    of the best model, into the run; returns the final metrics."""
    info, model, analysis = job.data.info, job.trainer.model, cfg.analysis
    tracker.log_metrics({**result.test, "val/best_epoch": float(result.best_epoch)}
                        | ({"train/stopped_epoch": float(result.stopped_epoch)} if result.stopped_epoch else {}))
    tracker.log_artifact(job.trainer.best_path, "checkpoints")
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
        began = time.perf_counter()
        plots |= final_artifacts(model, *sample, info.class_names, analysis, title)
        log.info("analysis done in %.1f s", time.perf_counter() - began)
    log_artifacts(tracker, plots)
    if cfg.tracking.log_model:
        model_uri = tracker.log_model(job.trainer.best_path, classifier_spec(cfg, job.data, tracker.run_id),
                                      input_example(job.data))
        if model_uri and cfg.tracking.register and not cfg.tracking.parent_run_id:  # a sweep registers its best
            tracker.set_tags({REGISTERED_TAG: register(tracker.uri, model_uri, cfg.tracking.register,
                                                       tracker.run_id)})
    final = {**result.history[-1], **result.test}
    missing = [m for m in as_list(cfg.optimized_metric) if m not in final]
    if missing:
        raise ConfigError("optimized_metric", f"{missing[0]!r} is not among {', '.join(final)}")
    return final
