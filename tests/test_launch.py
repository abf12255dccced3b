"""The rank launcher (imgexp.launch) in-process, on CPU with gloo: rank 0's result or error is the job's,
the other ranks log to their own file; SLURM's environment becomes torch.distributed's."""
from __future__ import annotations

import logging
import os
from types import SimpleNamespace
from unittest import mock

import pytest
import torch
from omegaconf import OmegaConf

from imgexp import elastic, launch


def collectives(cfg, output_dir, overrides, ranks, device, gpus):
    """A job: what every rank sees of the others, and a line in the job's log."""
    logging.getLogger("imgexp.job").info("rank %d of %d on %s", ranks.rank, ranks.world, device)
    rows = torch.arange(ranks.rank + 1, dtype=torch.float32).unsqueeze(1)  # rank r has r + 1 rows
    return {"objects": ranks.objects(ranks.rank * 10), "sum": ranks.sum(torch.tensor([ranks.rank + 1])).item(),
            "rows": ranks.gather_rows(rows).squeeze(1).tolist(), "shared": ranks.share(f"from {ranks.rank}"),
            "overrides": list(overrides), "lr": cfg.optimizer.lr, "threads": torch.get_num_threads()}


def fails_on_rank_0(cfg, output_dir, overrides, ranks, device, gpus):
    if ranks.rank == 0:
        raise ValueError("rank 0 gave up")
    return "rank 1 finished"


@pytest.fixture
def restored_logging():
    """launch_ranks leaves this process's logging as it found it; the fixture checks that it does."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    assert root.handlers == handlers and root.level == level


def test_two_ranks_return_rank_0s_result_and_log_as_the_job_does(tmp_path, restored_logging):
    log_file = tmp_path / "job.log"
    handler = logging.FileHandler(log_file)
    logging.getLogger().addHandler(handler)
    try:
        cfg = OmegaConf.create({"device": "cpu", "optimizer": {"lr": 0.25}})
        result = elastic.launch_ranks(collectives, cfg, tmp_path, ["optimizer.lr=0.25"], 2, [])
    finally:
        logging.getLogger().removeHandler(handler)
        handler.close()
    assert result["objects"] == [0, 10] and result["sum"] == 3 and result["rows"] == [0.0, 0.0, 1.0]
    assert result["shared"] == "from 0" and result["overrides"] == ["optimizer.lr=0.25"] and result["lr"] == 0.25
    assert result["threads"] == max(1, (os.cpu_count() or 1) // 2)  # the ranks share the cores
    assert "rank 0 of 2 on cpu" in log_file.read_text()  # rank 0 logs where the job logs,
    assert "rank 1 of 2 on cpu" in (tmp_path / "rank1.log").read_text()  # the others in rank<N>.log
    assert "rank 1 of 2" not in log_file.read_text() and not (tmp_path / "rank0.log").exists()


def test_rank_0s_error_is_the_jobs_one_line(tmp_path, restored_logging):
    with pytest.raises(elastic.RankFailed) as err:
        elastic.launch_ranks(fails_on_rank_0, OmegaConf.create({"device": "cpu"}), tmp_path, [], 2, [])
    assert str(err.value) == "rank 0 gave up"


@pytest.mark.parametrize("err,outcome", [
    (ValueError("bad value"), {"kind": "error", "message": "bad value", "exit_code": 130, "lost": False}),
    (KeyboardInterrupt(), {"kind": "stopped", "message": "KeyboardInterrupt", "exit_code": 130, "lost": False}),
    (elastic.RanksStopped("stopped by SIGTERM", 143), {"kind": "stopped", "message": "stopped by SIGTERM",
                                                      "exit_code": 143, "lost": False}),
])
def test_what_rank_0_tells_the_launcher(err, outcome):
    assert elastic.outcome_of(err) == outcome


def test_a_pruned_or_interrupted_rank_0_says_so():
    from imgexp.train.ranks import RankLost

    pruned = ValueError("pruned at epoch 2")
    pruned.run_status = "pruned"
    assert elastic.outcome_of(pruned)["kind"] == "pruned"
    lost = elastic.outcome_of(RankLost("Connection closed by peer"))
    assert (lost["kind"], lost["lost"]) == ("stopped", True)


def failure(rank, timestamp, message=None, exitcode=1, signal_name="SIGKILL"):
    data = {"message": {"message": message}} if message else {}
    return SimpleNamespace(local_rank=rank, timestamp=timestamp, error_file_data=data, exitcode=exitcode,
                           signal_name=lambda: signal_name)


@pytest.mark.parametrize("failures,first", [
    # rank 1 stopped because rank 0 had failed first: rank 0's own error is the cause
    ([failure(1, 2, "StoppedByRankZero: rank 0 failed"), failure(0, 1, "ValueError: bad")], "rank 0: ValueError: bad"),
    # rank 0 lost its peer, which had been killed: the kill is the cause
    ([failure(0, 2, "RankLost: Connection closed by peer"), failure(1, 1, exitcode=-9)], "rank 1: killed by SIGKILL"),
    ([failure(1, 1, "RankLost: gloo"), failure(0, 2, exitcode=3)], "rank 0: exit code 3"),
    ([failure(0, 1, "Terminated: SIGTERM"), failure(1, 2, "RankLost: gloo")], "rank 0: Terminated: SIGTERM"),
])
def test_the_first_rank_to_fail_of_its_own_accord_is_named(failures, first):
    err = SimpleNamespace(failures={f.local_rank: f for f in failures})  # torch keys them by global rank
    assert elastic.first_failure(err) == first


def test_a_slurm_tasks_environment_becomes_torch_distributeds(tmp_path, restored_logging):
    torch_env = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
    with mock.patch.dict(os.environ):  # the environment as it was, after the test (join_slurm_step adds keys)
        for key in (*torch_env, "SLURM_STEP_NODELIST", "SLURM_STEP_TASKS_PER_NODE"):
            os.environ.pop(key, None)
        os.environ.update({"SLURM_PROCID": "0", "SLURM_STEP_NUM_TASKS": "4", "SLURM_LOCALID": "0",
                           "SLURM_JOB_NODELIST": "localhost", "SLURM_TASKS_PER_NODE": "2(x2)", "SLURM_JOB_ID": "20123"})
        launch.join_slurm_step(tmp_path)
        assert {k: os.environ[k] for k in torch_env} == {
            "RANK": "0", "WORLD_SIZE": "4", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "2", "MASTER_ADDR": "localhost",
            "MASTER_PORT": "20123"}  # a port of the job's own, which a requeued job keeps
        assert launch.is_rank() and launch.first_task()
        assert launch.rank_device("auto", [], 0) == torch.device("cpu")
        with pytest.raises(launch.ConfigError, match="'cuda' asked for"):
            launch.rank_device("cuda", [], 0)


def test_a_rank_but_0_logs_to_its_own_file_and_its_warnings_to_stderr(tmp_path, capsys, restored_logging):
    root = logging.getLogger()
    saved, level = list(root.handlers), root.level
    try:
        launch.set_up_logging([], 3, tmp_path)
        logging.getLogger("imgexp.x").info("an info line")
        logging.getLogger("imgexp.x").warning("a warning")
        for h in root.handlers:
            h.flush()
        own = (tmp_path / "rank3.log").read_text()
        assert "an info line" in own and "a warning" in own
        assert "[rank 3]" in capsys.readouterr().err
    finally:
        for h in root.handlers:
            h.close()
        root.handlers[:] = saved
        root.setLevel(level)
