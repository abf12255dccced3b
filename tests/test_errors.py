"""Bad input ends with one line on stderr that names the key, and a non-zero exit."""
from __future__ import annotations

import pytest

from conftest import run_cli

CASES = [
    (["model=nope"], ["model/nope", "small_cnn"]),
    (["epochs=abc"], ["epochs=abc", "Integer"]),
    (["batch=0"], ["batch", ">= 1"]),
    (["optimizer.lrr=0.1"], ["optimizer.lrr", "'lrr'"]),
    (["optimizer.lr=-1"], ["optimizer.lr", "> 0"]),
    (["data.val_fraction=1.5"], ["data.val_fraction"]),
    (["device=gpu"], ["device", "gpu"]),
]


BEFORE_TRAINING = [  # values that only failed once trained (issue 37): one line, and no MLflow run
    (["tracking.register='bad name/with:chars'"],
     "tracking.register: Invalid model name 'bad name/with:chars'. Names cannot contain '/' or ':'."),
    (["batch=1", "trainer.devices=2"], "batch: 1 is the global batch, shared out over the 2 ranks: it must be at "
                                       "least 2"),
]


@pytest.mark.parametrize("args,line", BEFORE_TRAINING, ids=[" ".join(a) for a, _ in BEFORE_TRAINING])
def test_a_value_that_failed_after_training_fails_before_it(tmp_path, args, line):
    from mlflow import MlflowClient

    proc = run_cli(*args, "progress=false", cwd=tmp_path)
    assert proc.returncode == 1 and proc.stderr.strip().splitlines() == [f"imgexp: error: {line}"]
    if (tmp_path / "mlflow.db").exists():
        client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
        assert not client.search_runs([e.experiment_id for e in client.search_experiments()])


@pytest.mark.parametrize("args,mentions", CASES, ids=[" ".join(a) for a, _ in CASES])
def test_one_line_error(tmp_path, args, mentions):
    check_one_line(run_cli(*args, "tracking=none", cwd=tmp_path), tmp_path, mentions)


@pytest.mark.slow
def test_one_line_error_from_a_new_interpreter(tmp_path):
    """The same through ``python -m imgexp``: an error raised after the run's heavy imports."""
    check_one_line(run_cli("device=gpu", "tracking=none", cwd=tmp_path, process=True), tmp_path, ["device", "gpu"])


def check_one_line(proc, tmp_path, mentions):
    assert proc.returncode == 1
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("imgexp: error: ")
    for text in mentions:
        assert text in lines[0]
    assert "Traceback" not in proc.stdout + proc.stderr
    assert not (tmp_path / "mlflow.db").exists()
