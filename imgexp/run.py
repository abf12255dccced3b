"""One training job, in phases: where the run starts from (:mod:`imgexp.start`: a FINISHED run to reuse, an
interrupted one to resume, or nothing), build (:mod:`imgexp.build`), train, report (:mod:`imgexp.report`); then
return the metric. A job runs as one process or as several ranks (:mod:`imgexp.launch`); every rank goes through
the phases, rank 0 alone deciding where the run starts, talking to MLflow and the trial, and writing
checkpoints."""
from __future__ import annotations

import logging
import os
import shutil
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional, Sequence

import torch
from omegaconf import DictConfig, OmegaConf

from imgexp import elastic, launch
from imgexp.analysis.sample import analysis_sample
from imgexp.build import Job, build
from imgexp.checkpoint import load, temp_files
from imgexp.config import ConfigError, as_list, flat_params, validate
from imgexp.gpus import claim_gpus
from imgexp.redact import mask_container
from imgexp.report import report, summary
from imgexp.runtime import resolve_device
from imgexp.start import Start, returned, run_name_of, staged_dir, starting_point
from imgexp.sweep_overrides import asked
from imgexp.tracking import resume
from imgexp.tracking.store import CHECKPOINT_DIR_TAG
from imgexp.tracking.system_metrics import system_metrics
from imgexp.tracking.tracker import Tracker, start_run
from imgexp.tracking.trial import join_trial
from imgexp.train import TrainingInterrupted
from imgexp.train.ranks import Ranks
from imgexp.train.signals import stop_on_signals

log = logging.getLogger(__name__)


def resume_hint(err: TrainingInterrupted, overrides: Sequence[str], target: str) -> None:
    """Add to the interruption's message the command that continues the run."""
    again = " ".join([o for o in overrides if not o.startswith("resume=")] + [f"resume={target}"])
    err.args = (f"{err.args[0]}; continue with: python -m imgexp {again}",)

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
    local = launch.ranks_asked(cfg)  # this node's
    claimed = local if cfg.device in ("auto", "cuda") else 0  # device=cuda:N pins; cpu and mps claim nothing
    with claim_gpus(claimed, cfg.jobs_per_gpu) as gpus:
        if world > 1:
            return elastic.launch_ranks(run_rank, cfg, output_dir, overrides, local, gpus)
        device = resolve_device(f"cuda:{gpus[0]}" if gpus and torch.cuda.is_available() else cfg.device)
        return run_rank(cfg, output_dir, overrides, Ranks(), device, gpus)


@contextmanager
def tracking(cfg: DictConfig, start: Start, output_dir: Path, ranks: Ranks) -> Iterator[tuple[Tracker, Path]]:
    """Phase 2: rank 0 opens (or reopens) the MLflow run and gives the run its checkpoint folder, named by the
    run id, with a resumed run's checkpoints moved in; the other ranks get a tracker that records nothing,
    and the same folder."""
    if not ranks.main:
        folder, run_id, uri, resumed = ranks.share(None)
        with machine_metrics(cfg, ranks, uri, run_id, resumed):
            yield Tracker(), Path(folder)
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
        ranks.share((str(checkpoint_dir), tracker.run_id, tracker.uri, resumed is not None))
        with machine_metrics(cfg, ranks, tracker.uri, tracker.run_id, resumed is not None):
            yield tracker, checkpoint_dir


def machine_metrics(cfg: DictConfig, ranks: Ranks, uri: Optional[str], run_id: Optional[str], resumed: bool):
    """This machine's system metrics into the run (:mod:`imgexp.tracking.system_metrics`), from its first rank;
    under its node id in a run over several nodes."""
    node = f"node{os.environ.get('GROUP_RANK', '0')}" if cfg.trainer.nodes > 1 else None
    return system_metrics(cfg.tracking.system_metrics and ranks.local_rank == 0, uri, run_id, node, resumed)


def run_rank(cfg: DictConfig, output_dir: Path, overrides: Sequence[str], ranks: Ranks, device: torch.device,
             gpus: Sequence[int] = ()) -> float | list[float]:
    """The job's phases on one rank (the only one, or one of several)."""
    if ranks.world > 1:
        log.info("rank %d of %d (pid %d) on %s: %s", ranks.rank, ranks.world, os.getpid(), device,
                 " ".join(asked(overrides)) or "(no overrides)")
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
            if cfg.trainer.nodes > 1:  # the other nodes cannot read rank 0's disk: it sends the state
                state = ranks.share(start.resumed.state if start else None)
            else:
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
    if ranks.main or (ranks.local_rank == 0 and cfg.trainer.nodes > 1):  # each node's console ends with it
        log.info("%s", summary(result, cfg.epochs))
    if ranks.main:
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
    report_to_trial = join_trial(cfg.trial, metrics[0], checkpoint_dir, tracker.run_id) if ranks.main else None
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
            from imgexp.analysis.report import log_artifacts, tsne_artifacts

            title = f"epoch {epoch}, val/acc {metrics['val/acc']:.3f}"
            log_artifacts(tracker, tsne_artifacts(trainer.evaluated, *sample, info.class_names, analysis,
                                                  f"epoch{epoch:03d}", title, three_d=False))
        if report_to_trial:
            report_to_trial(epoch, metrics)

    try:
        with stop_on_signals(trainer):
            return trainer.fit(on_epoch if ranks.main else None), sample
    except TrainingInterrupted as err:
        resume_hint(err, asked(overrides), tracker.run_id or str(output_dir))
        raise
