"""One run over several ranks (trainer.devices=N; gloo on this CPU, real processes): the shards, the
parameters, the metrics, and one job = one directory, one MLflow run, one trial."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import torch
from mlflow import MlflowClient
from optuna.trial import TrialState

from conftest import run_cli
from ddp_worker import check_records
from imgexp.data.loader import Shard, StreamLoader, TensorLoader
from imgexp.data.sources import Files
from imgexp.tracking.store import download_best_weights

WORKER = Path(__file__).with_name("ddp_worker.py")
FAST = ["analysis=none", "progress=false", "data.subset=300", "device=cpu"]
TWO = ["trainer.devices=2"]


def env(**extra: str) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "HYDRA_FULL_ERROR")}
    return {**base, **extra}


def runs(workdir: Path, experiment: str = "imgexp"):
    client = MlflowClient(f"sqlite:///{workdir}/mlflow.db")
    exp = client.get_experiment_by_name(experiment)
    return client, client.search_runs([exp.experiment_id]) if exp else []


# ---------------------------------------------------------------- shards
@pytest.mark.parametrize("n,batch,world", [(201, 20, 2), (64, 64, 3), (10, 4, 3), (7, 64, 2), (100, 10, 4)])
def test_the_ranks_parts_of_each_batch_are_disjoint_and_cover_it(n, batch, world):
    order = torch.randperm(n, generator=torch.Generator().manual_seed(1))
    parts = [list(Shard(r, world).batches(order, batch)) for r in range(world)]
    assert len({len(p) for p in parts}) == 1 and len(parts[0]) == Shard(0, world).count(n, batch)
    covered = []
    for k, batch_parts in enumerate(zip(*parts)):
        sizes = [len(p) for p in batch_parts]
        assert max(sizes) - min(sizes) <= 1 and min(sizes) >= 1
        assert torch.cat(batch_parts).tolist() == order[k * batch: k * batch + sum(sizes)].tolist()
        covered += torch.cat(batch_parts).tolist()
    assert len(covered) == len(set(covered))
    assert n - len(covered) == (n % batch if n % batch < world else 0), "only a last batch smaller than the ranks"
    assert torch.cat([Shard(r, world).rows(n) for r in range(world)]).tolist() == list(range(n))


def test_tensor_and_stream_loaders_shard_the_same_order(tmp_path):
    from conftest import write_image

    n, batch = 23, 8
    paths = []
    for i in range(n):
        write_image(tmp_path / f"{i}.png", i % 3, size=4)
        paths.append(str(tmp_path / f"{i}.png"))
    y = torch.arange(n)  # the label is the index: what a rank trained on, read back
    ids = {}
    for r in range(2):
        tensor = TensorLoader(torch.zeros(n, 1, 1, 1), y, batch, lambda b: b, shuffle=True, seed=3, shard=Shard(r, 2))
        stream = StreamLoader(Files(paths, y), (4, 4), 1, batch, lambda b: b, torch.device("cpu"), 0, shuffle=True,
                              seed=3, shard=Shard(r, 2))
        ids[r] = [yb.tolist() for _, yb in tensor]
        assert ids[r] == [yb.tolist() for _, yb in stream]
        assert len(tensor) == len(stream) == 3
    whole = [yb.tolist() for _, yb in TensorLoader(torch.zeros(n, 1, 1, 1), y, batch, lambda b: b, shuffle=True,
                                                   seed=3)]
    assert [a + b for a, b in zip(ids[0], ids[1])] == whole, "the ranks' parts, joined, are one rank's batches"


@pytest.mark.slow
def test_two_ranks_train_disjoint_shards_with_identical_parameters(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--rdzv-backend",
                           "c10d", "--rdzv-endpoint", "127.0.0.1:0", str(WORKER), str(tmp_path)],
                          env=env(GLOO_SOCKET_IFNAME="lo"), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    check_records(tmp_path)


# ---------------------------------------------------------------- how many ranks
@pytest.mark.parametrize("env_vars,devices,device,world", [
    ({}, "2", "cpu", 2),
    ({}, "auto", "cpu", 1),
    ({"IMGEXP_GPU_IDS": "0,1,2"}, "auto", "auto", 3),  # declared GPUs (no CUDA here): auto takes them all
    ({"SLURM_PROCID": "0", "SLURM_NTASKS": "4"}, "1", "auto", 1),  # a batch script: one process, whatever -n says
    ({"SLURM_PROCID": "1", "SLURM_STEP_NUM_TASKS": "2"}, "auto", "auto", 2),  # a task of an srun step of 2
    ({"SLURM_PROCID": "1", "SLURM_STEP_NUM_TASKS": "2"}, "2", "auto", 2),
])
def test_world_size(compose_cfg, monkeypatch, env_vars, devices, device, world):
    from imgexp.launch import world_size

    for k in ("IMGEXP_GPU_IDS", "SLURM_PROCID", "SLURM_NTASKS", "SLURM_STEP_NUM_TASKS", "SLURM_JOB_ID"):
        monkeypatch.delenv(k, raising=False)
    for k, v in env_vars.items():
        monkeypatch.setenv(k, v)
    assert world_size(compose_cfg(f"trainer.devices={devices}", f"device={device}")) == world


@pytest.mark.parametrize("env_vars,first", [
    ({}, True), ({"SLURM_PROCID": "0", "SLURM_NTASKS": "4"}, True),
    ({"SLURM_PROCID": "0", "SLURM_STEP_NUM_TASKS": "2"}, True), ({"SLURM_PROCID": "1", "SLURM_STEP_NUM_TASKS": "2"}, False),
])
def test_only_a_jobs_first_slurm_task_records_its_config_error(monkeypatch, env_vars, first):
    from imgexp.launch import first_task

    for k in ("SLURM_PROCID", "SLURM_NTASKS", "SLURM_STEP_NUM_TASKS"):
        monkeypatch.delenv(k, raising=False)
    for k, v in env_vars.items():
        monkeypatch.setenv(k, v)
    assert first_task() is first


@pytest.mark.parametrize("args,env_vars,message", [
    (["trainer.devices=0"], {}, "trainer.devices: must be a number >= 1 or auto, got '0'"),
    (["trainer.devices=two"], {}, "trainer.devices: must be a number >= 1 or auto, got 'two'"),
    (["trainer.devices=2", "device=cuda:1"], {}, "device: 'cuda:1' is one device"),
    (["trainer.devices=1"], {"SLURM_PROCID": "0", "SLURM_STEP_NUM_TASKS": "2"},
     "trainer.devices: 1, but this SLURM job step has 2 tasks"),
    (["jobs_per_gpu=0"], {}, "jobs_per_gpu: must be >= 1, got 0"),
    (["trainer.devices=2", "device=cpu", "trainer.sync_bn=true"], {},
     "trainer.sync_bn: torch's SyncBatchNorm runs on CUDA only"),
])
def test_a_devices_count_that_cannot_be_is_one_line(workdir, monkeypatch, args, env_vars, message):
    for k, v in env_vars.items():
        monkeypatch.setenv(k, v)
    proc = run_cli(*args, "tracking=none", cwd=workdir)
    assert proc.returncode == 1 and message in proc.stderr, proc.stderr[-1000:]
    assert len(proc.stderr.strip().splitlines()) == 1


# ---------------------------------------------------------------- the CLI
@pytest.mark.slow
def test_a_two_rank_run_is_one_run_in_one_directory_and_its_val_acc_is_its_best_checkpoints(workdir):
    proc = run_cli(*FAST, *TWO, "epochs=2", "data.subset=400", "batch=50", cwd=workdir, process=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    client, found = runs(workdir)
    (run,) = found
    assert run.info.status == "FINISHED" and run.data.params["trainer.devices"] == "2"
    (out,) = workdir.glob("outputs/*/*")
    assert (out / "rank1.log").exists() and "rank 1 of 2" in (out / "rank1.log").read_text()
    assert len(client.get_metric_history(run.info.run_id, "val/acc")) == 2

    # best.pt, evaluated by one process over the whole validation split, scores the logged val/acc
    from hydra import compose, initialize_config_module

    from imgexp.checkpoint import load
    from imgexp.build import build

    best_epoch = int(run.data.metrics["val/best_epoch"])
    logged = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "val/acc")}[best_epoch]
    path = download_best_weights(client, run.info.run_id, workdir)
    with initialize_config_module(config_module="imgexp.conf", version_base=None):
        cfg = compose(config_name="config", overrides=[*FAST, "data.subset=400", "batch=50", "tracking=none"])
    job = build(cfg, workdir / "one", torch.device("cpu"))
    job.trainer.model.load_state_dict(load(path))
    logits, targets = job.trainer.predict(job.data.val)
    assert len(targets) == sum(len(b[1]) for b in job.data.val)
    assert (logits.argmax(1) == targets).float().mean().item() == pytest.approx(logged, abs=1e-6)


@pytest.mark.slow
def test_a_parallel_grid_sweep_of_two_rank_jobs_is_two_runs_in_two_directories(workdir):
    proc = run_cli("-m", "hydra/launcher=parallel", "hydra.launcher.n_jobs=2", *FAST, *TWO, "epochs=1", "seed=0,1",
                   "tracking.experiment=ddp-grid", cwd=workdir, process=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    _, found = runs(workdir, "ddp-grid")
    parents = [r for r in found if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in found if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 1 and len(children) == 2, "nothing but the sweep's parent and its two jobs"
    assert sorted(r.data.params["seed"] for r in children) == ["0", "1"]
    assert all(r.info.status == "FINISHED" for r in found)
    jobs = sorted(p.name for p in next(workdir.glob("multirun/*/*")).iterdir() if p.is_dir())
    assert jobs == ["0", "1"]


@pytest.mark.slow
def test_an_optuna_sweep_of_two_rank_trials_trains_each_trials_parameters_on_every_rank(workdir):
    proc = run_cli("-m", "hydra/sweeper=optuna", "hydra.sweeper.study_name=ddp", "hydra.sweeper.n_trials=3",
                   "hydra.sweeper.pruner=median", "hydra.sweeper.pruner_startup_trials=1",
                   "hydra.sweeper.sampler=random", "hydra.sweeper.seed=0", "optimizer.lr=choice(0.003,1e-9)", "epochs=3", *FAST, *TWO,
                   "reuse=false", "tracking.experiment=ddp-optuna", cwd=workdir, process=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    study = optuna.load_study(study_name="ddp", storage=f"sqlite:///{workdir}/optuna/ddp.db")
    assert len(study.trials) == 3
    client, found = runs(workdir, "ddp-optuna")
    children = {int(r.data.tags["imgexp.trial"]): r for r in found if "mlflow.parentRunId" in r.data.tags}
    assert sorted(children) == [0, 1, 2] and len(found) == 4, "one run per trial, and the study's parent"
    for t in study.trials:
        (out,) = workdir.glob(f"multirun/*/*/{t.number}")
        rank1 = (out / "rank1.log").read_text()
        assert f"optimizer.lr={t.params['optimizer.lr']}" in rank1.splitlines()[0], "rank 1 trained the trial's lr"
        epochs = len(re.findall(r"epoch \d/3:", rank1))
        history = client.get_metric_history(children[t.number].info.run_id, "val/acc")
        assert epochs == len(history), "rank 1 stopped where rank 0 did"
        if t.state == TrialState.PRUNED:
            assert epochs < 3 and children[t.number].data.tags["imgexp.status"] == "pruned"
    assert any(t.state == TrialState.PRUNED for t in study.trials), "the lr that cannot learn is pruned"


@pytest.mark.slow
def test_kill_9_of_rank_1_then_resume_auto_finishes_the_same_run_with_each_epoch_once(workdir):
    args = [sys.executable, "-m", "imgexp", *FAST, *TWO, "data.subset=null", "epochs=4", "batch=16",
            "tracking.experiment=ddp-kill"]
    job, rank1 = start_and_wait_for_rank1_epoch(workdir, args)
    os.kill(rank1, signal.SIGKILL)
    _, err = job.communicate(timeout=180)
    assert job.returncode != 0 and err.strip().splitlines()[-1] == (
        "imgexp: the run lost rank 1: killed by SIGKILL; the run stopped at its last checkpoint (resume=auto "
        "continues it)"), err[-2000:]
    assert "GLHF" not in err and "leaked" not in err, "one line naming the rank, not gloo's or Python's words"
    client, (run,) = runs(workdir, "ddp-kill")
    assert run.info.status == "KILLED", (run.info.status, run.data.tags.get("imgexp.error"), err[-2000:])

    again = run_cli(*args[3:], "resume=auto", cwd=workdir, process=True, timeout=400)
    assert again.returncode == 0, again.stderr[-3000:]
    _, found = runs(workdir, "ddp-kill")
    assert [r.info.run_id for r in found] == [run.info.run_id]
    (run,) = found
    assert run.info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val/acc")] == [1, 2, 3, 4]
    assert len(client.get_metric_history(run.info.run_id, "test/acc")) == 1


def start_and_wait_for_rank1_epoch(workdir: Path, args: list[str]) -> tuple[subprocess.Popen, int]:
    """Start ``args``; once rank 1 has logged its first epoch and rank 0 saved it, return the job and rank 1's
    pid."""
    job = subprocess.Popen(args, cwd=workdir, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and job.poll() is None:
        logs = list(workdir.glob("outputs/*/*/rank1.log"))
        text = logs[0].read_text() if logs else ""
        if re.search(r"epoch 1/\d+:", text) and list(workdir.glob("outputs/*/*/checkpoints/*/last.pt")):
            return job, int(re.search(r"rank 1 of 2 \(pid (\d+)\)", text).group(1))
        time.sleep(0.05)
    job.kill()
    raise AssertionError(f"rank 1 never finished its first epoch: {job.communicate()[1][-2000:]}")


@pytest.mark.slow
def test_sigterm_stops_every_rank_rank_0_saves_and_resume_continues_mid_epoch(workdir):
    args = [sys.executable, "-m", "imgexp", *FAST, *TWO, "data.subset=null", "epochs=3", "batch=8",
            "tracking.experiment=ddp-term"]
    job, _ = start_and_wait_for_rank1_epoch(workdir, args)
    time.sleep(0.3)
    job.send_signal(signal.SIGTERM)
    _, err = job.communicate(timeout=180)
    assert job.returncode == 143, err[-2000:]
    client, (run,) = runs(workdir, "ddp-term")
    assert run.info.status == "KILLED" and run.data.tags["imgexp.status"] == "interrupted"
    (out,) = workdir.glob("outputs/*/*")
    assert "SIGTERM received" in (out / "rank1.log").read_text(), "the signal reached rank 1"

    again = run_cli(*args[3:], "resume=auto", cwd=workdir, process=True, timeout=400)
    assert again.returncode == 0, again.stderr[-3000:]
    assert re.search(r"resuming .* after epoch \d of 3 and \d+ images of the next", again.stdout + again.stderr)
    _, (run,) = runs(workdir, "ddp-term")
    assert run.info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val/acc")] == [1, 2, 3]

    # exact: the interrupted run's numbers are those of the same run left alone (each rank's RNG and loader
    # position restored, the interrupted epoch's sums counted once)
    whole = run_cli(*[a for a in args[3:] if not a.startswith("tracking.")], "tracking.experiment=ddp-whole",
                    cwd=workdir, process=True, timeout=400)
    assert whole.returncode == 0, whole.stderr[-3000:]
    _, (alone,) = runs(workdir, "ddp-whole")
    for metric in ("train/loss", "train/acc", "val/loss", "val/acc"):
        resumed = [m.value for m in sorted(client.get_metric_history(run.info.run_id, metric), key=lambda m: m.step)]
        left_alone = [m.value for m in sorted(client.get_metric_history(alone.info.run_id, metric),
                                              key=lambda m: m.step)]
        assert resumed == pytest.approx(left_alone, rel=1e-5), metric
    assert run.data.metrics["test/acc"] == alone.data.metrics["test/acc"]


@pytest.mark.slow
def test_parallel_jobs_spread_over_the_gpu_slots_and_never_share_one(workdir, tmp_path_factory):
    locks = tmp_path_factory.mktemp("locks")
    proc = subprocess.run([sys.executable, "-m", "imgexp", "-m", "hydra/launcher=parallel", "hydra.launcher.n_jobs=4",
                           "seed=0,1,2,3", "epochs=1", "analysis=none", "progress=false", "data.subset=200",
                           "tracking.experiment=slots"], cwd=workdir, capture_output=True, text=True, timeout=600,
                          env=env(IMGEXP_GPU_IDS="0,1", IMGEXP_GPU_LOCKS=str(locks)))
    assert proc.returncode == 0, proc.stderr[-3000:]
    _, found = runs(workdir, "slots")
    jobs = [r for r in found if "mlflow.parentRunId" in r.data.tags]
    assert len(jobs) == 4 and {r.data.tags["imgexp.gpus"] for r in jobs} == {"0", "1"}
    for gpu in ("0", "1"):
        spans = sorted((r.info.start_time, r.info.end_time) for r in jobs if r.data.tags["imgexp.gpus"] == gpu)
        assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:])), f"two jobs held GPU {gpu} at once: {spans}"
