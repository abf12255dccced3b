"""GPU slot claims (imgexp.gpus, issue 21): real processes contending for flock'd slots over declared GPU
ids (IMGEXP_GPU_IDS; no CUDA needed), lock files in the test's folder (IMGEXP_GPU_LOCKS)."""
from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import torch

from imgexp import gpus
from imgexp.config import ConfigError

ROOT = Path(__file__).resolve().parents[1]

# argv: count jobs_per_gpu hold_s out_file go_file. Imports, says it is ready, waits for go_file (so the
# processes claim at once, not as fast as each imported), claims, holds, then writes what it held when.
WORKER = """
import json, logging, os, sys, time
from pathlib import Path
from imgexp.gpus import claim_gpus
logging.basicConfig(level=logging.INFO, format="%(message)s")
count, per_gpu, hold, out, go = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), sys.argv[4], sys.argv[5]
Path(out + ".ready").touch()
while not os.path.exists(go):
    time.sleep(0.01)
asked = time.time()
with claim_gpus(count, per_gpu, poll_s=0.05) as ids:
    start = time.time()
    Path(out + ".claimed").touch()
    time.sleep(hold)
    end = time.time()
Path(out).write_text(json.dumps({"ids": ids, "asked": asked, "start": start, "end": end}))
"""


def env(locks: Path, ids: str = "0,1", **extra: str) -> dict[str, str]:
    e = {k: v for k, v in os.environ.items() if k not in ("CUDA_VISIBLE_DEVICES", "SLURM_JOB_ID")}
    return {**e, gpus.IDS_ENV: ids, gpus.LOCKS_ENV: str(locks), **extra}


def wait_for(path: Path, timeout: float = 15) -> None:
    deadline = time.time() + timeout
    while not path.exists():
        assert time.time() < deadline, f"no {path.name} after {timeout} s"
        time.sleep(0.01)


def start(tmp: Path, name: str, environ: dict[str, str], count: int = 1, per_gpu: int = 1,
          hold: float = 1.5) -> subprocess.Popen:
    log = open(tmp / f"{name}.log", "w")
    return subprocess.Popen([sys.executable, "-c", WORKER, str(count), str(per_gpu), str(hold),
                             str(tmp / f"{name}.json"), str(tmp / "go")], env=environ, cwd=ROOT,
                            stdout=log, stderr=subprocess.STDOUT)


def run_together(tmp: Path, environs: dict[str, dict[str, str]], **kw) -> dict[str, dict]:
    """Start a worker per name, let them claim at once, wait for all: {name: result, with its log}."""
    procs = {name: start(tmp, name, e, **kw) for name, e in environs.items()}
    for name in procs:
        wait_for(tmp / f"{name}.json.ready")
    (tmp / "go").touch()
    results = {}
    for name, proc in procs.items():
        log = (tmp / f"{name}.log").read_text
        assert proc.wait(timeout=30) == 0, log()
        results[name] = {**json.loads((tmp / f"{name}.json").read_text()), "log": log()}
    return results


def overlap(a: dict, b: dict) -> bool:
    return a["start"] < b["end"] and b["start"] < a["end"]


def test_four_jobs_on_two_gpus_take_turns(tmp_path):
    locks = tmp_path / "locks"
    results = run_together(tmp_path, {f"job{i}": env(locks) for i in range(4)})
    assert len(results) == 4
    jobs = list(results.values())
    for i, a in enumerate(jobs):
        assert len(a["ids"]) == 1 and a["ids"][0] in (0, 1)
        for b in jobs[i + 1:]:
            assert not (a["ids"] == b["ids"] and overlap(a, b)), (a, b)
    assert Counter(j["ids"][0] for j in jobs) == {0: 2, 1: 2}
    waited = [j for j in jobs if any(j["start"] >= o["end"] for o in jobs if o is not j)]
    assert len(waited) == 2
    for j in jobs:  # one line while waiting, however many polls (0.05 s apart for over a second)
        assert j["log"].count("waiting for a GPU slot") == (1 if j in waited else 0), j["log"]
        assert j["log"].count(f"claimed GPU {j['ids'][0]} slot 0") == 1, j["log"]
    assert sorted(p.name for p in locks.glob("gpu-*")) == ["gpu-0.slot0.lock", "gpu-1.slot0.lock"]


def test_two_jobs_per_gpu_spread_at_once(tmp_path):
    results = run_together(tmp_path, {f"job{i}": env(tmp_path / "locks") for i in range(4)}, per_gpu=2)
    jobs = list(results.values())
    assert max(j["start"] for j in jobs) < min(j["end"] for j in jobs)  # all four held at once
    assert all(j["start"] - j["asked"] < 1 and "waiting" not in j["log"] for j in jobs)
    assert Counter(j["ids"][0] for j in jobs) == {0: 2, 1: 2}
    claimed = sorted(line for j in jobs for line in j["log"].splitlines() if line.startswith("claimed"))
    assert claimed == [f"claimed GPU {i} slot {s} (jobs_per_gpu 2)" for i in (0, 1) for s in (0, 1)]


def test_the_least_loaded_gpu_first(tmp_path, monkeypatch):
    """GPU 0 has a job in slot 1 only, GPU 1 none: the next job goes to GPU 1, not to GPU 0's free slot 0."""
    monkeypatch.setenv(gpus.IDS_ENV, "0,1")
    monkeypatch.setenv(gpus.LOCKS_ENV, str(tmp_path))
    a, b, c = (gpus.claim_gpus(1, jobs_per_gpu=2) for _ in range(3))
    assert (a.__enter__(), b.__enter__(), c.__enter__()) == ([0], [1], [0])  # GPU 0 slot 0, 1 slot 0, 0 slot 1
    a.__exit__(None, None, None)
    b.__exit__(None, None, None)
    with gpus.claim_gpus(1, jobs_per_gpu=2) as ids:
        assert ids == [1]
    c.__exit__(None, None, None)


def test_a_killed_job_frees_its_slot(tmp_path):
    environ = env(tmp_path / "locks", ids="0")
    holder = start(tmp_path, "holder", environ, hold=60)
    waiter = None
    try:
        (tmp_path / "go").touch()
        wait_for(tmp_path / "holder.json.claimed")
        waiter = start(tmp_path, "waiter", environ)
        deadline = time.time() + 15
        while "waiting for a GPU slot" not in (tmp_path / "waiter.log").read_text():
            assert time.time() < deadline and waiter.poll() is None, (tmp_path / "waiter.log").read_text()
            time.sleep(0.01)
        time.sleep(0.3)
        assert not (tmp_path / "waiter.json.claimed").exists()
        killed = time.time()
        holder.send_signal(signal.SIGKILL)
        assert holder.wait(timeout=10) == -signal.SIGKILL
        assert waiter.wait(timeout=10) == 0, (tmp_path / "waiter.log").read_text()
    finally:
        for proc in (holder, waiter):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()
    result = json.loads((tmp_path / "waiter.json").read_text())
    assert result["ids"] == [0] and killed < result["start"] < killed + 2
    assert (tmp_path / "locks" / "gpu-0.slot0.lock").exists()  # nobody cleaned up


def test_claim_two_and_too_many(tmp_path, monkeypatch):
    monkeypatch.setenv(gpus.IDS_ENV, "1,0")
    monkeypatch.setenv(gpus.LOCKS_ENV, str(tmp_path / "new" / "locks"))
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    with gpus.claim_gpus(2) as ids:
        assert ids == [0, 1]
        folder = tmp_path / "new" / "locks"
        assert folder.stat().st_mode & 0o7777 == 0o1777
        assert {p.stat().st_mode & 0o777 for p in folder.glob("*.lock")} == {0o666}
        with pytest.raises(BlockingIOError), open(folder / "gpu-1.slot0.lock") as f:  # held
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    with open(folder / "gpu-1.slot0.lock") as f:  # released
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    with pytest.raises(ConfigError) as e:
        with gpus.claim_gpus(3):
            pass
    assert e.value.key == "trainer.devices"


def test_physical_ids_name_the_locks(tmp_path, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    assert [gpus.physical_id(0), gpus.physical_id(1)] == ["3", "5"]
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert gpus.physical_id(1) == "1"
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-8a2c/x:1")
    monkeypatch.setenv(gpus.IDS_ENV, "0")
    monkeypatch.setenv(gpus.LOCKS_ENV, str(tmp_path / "uuid"))
    with gpus.claim_gpus(1) as ids:
        assert ids == [0] and (tmp_path / "uuid" / "gpu-GPU-8a2c_x_1.slot0.lock").exists()

    # GPU 0 of "3" and GPU 0 of "3,5" are one GPU: they take turns; GPU 0 of "5" is another
    locks = tmp_path / "locks"
    results = run_together(tmp_path, {name: env(locks, ids="0", CUDA_VISIBLE_DEVICES=visible)
                                       for name, visible in (("a", "3"), ("b", "3,5"), ("c", "5"))})
    a, b, c = results["a"], results["b"], results["c"]
    assert not overlap(a, b) and overlap(c, a if a["start"] < b["start"] else b)
    assert "waiting" in (a["log"] + b["log"]) and "waiting" not in c["log"]
    assert sorted(p.name for p in locks.glob("gpu-*")) == ["gpu-3.slot0.lock", "gpu-5.slot0.lock"]


def test_gpu_ids(monkeypatch, tmp_path):
    monkeypatch.setenv("SLURM_JOB_ID", "42")
    monkeypatch.delenv(gpus.IDS_ENV, raising=False)
    assert gpus.gpu_ids() == []
    monkeypatch.setenv(gpus.IDS_ENV, "")  # compose's ${WORKER_GPU_IDS:-}: as unset
    assert gpus.gpu_ids() == []
    monkeypatch.setenv(gpus.LOCKS_ENV, str(tmp_path))
    with gpus.claim_gpus(4) as ids:  # nothing to claim: SLURM gave the job its GPUs
        assert ids == []
    monkeypatch.setenv(gpus.IDS_ENV, "0,1")
    assert gpus.gpu_ids() == [0, 1]
    monkeypatch.delenv("SLURM_JOB_ID")
    monkeypatch.setenv(gpus.IDS_ENV, " ")
    assert gpus.gpu_ids() == list(range(torch.cuda.device_count()))
    monkeypatch.setenv(gpus.IDS_ENV, "0,x")
    with pytest.raises(ValueError, match=gpus.IDS_ENV):
        gpus.gpu_ids()
