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
