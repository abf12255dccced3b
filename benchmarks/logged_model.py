"""What logging the best model as an MLflow model adds to a run: wall time and stored bytes, with
``tracking.log_model`` true and false interleaved, as a user runs ``python -m imgexp``.

    python benchmarks/logged_model.py [--rounds 3]

Runs in a temporary folder (its own ./mlflow.db and ./mlruns); prints a Markdown table for benchmarks/README.md.
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CASES = {  # name: overrides (each run alone in its experiment)
    "small_cnn, digits, 10 epochs (the default run)": ["progress=false"],
    "resnet18, digits, 1 epoch": ["model=resnet18", "epochs=1", "analysis=none", "progress=false"],
}


def size(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) if folder.exists() else 0


def one(cwd: Path, overrides: list[str], log_model: bool, experiment: str) -> tuple[float, int, int]:
    """Wall seconds, the run's artifact bytes, the logged model's bytes."""
    from mlflow import MlflowClient

    began = time.perf_counter()
    subprocess.run([sys.executable, "-m", "imgexp", *overrides, f"tracking.log_model={log_model}",
                    f"tracking.experiment={experiment}"], cwd=cwd, check=True, capture_output=True)
    wall = time.perf_counter() - began
    client = MlflowClient(f"sqlite:///{cwd / 'mlflow.db'}")
    exp = client.get_experiment_by_name(experiment)
    (run,) = client.search_runs([exp.experiment_id])
    artifacts = size(Path(run.info.artifact_uri.removeprefix("file://")))
    models = run.outputs.model_outputs if run.outputs else []
    model = size(Path(client.get_logged_model(models[0].model_id).artifact_location.removeprefix("file://"))) \
        if models else 0
    return wall, artifacts, model


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    print("| run | tracking.log_model | wall (median, min-max) | run artifacts | logged model |")
    print("|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        cwd = Path(tmp)
        for name, overrides in CASES.items():
            got: dict[bool, list] = {True: [], False: []}
            for r in range(args.rounds):
                for log_model in (False, True):
                    got[log_model].append(one(cwd, overrides, log_model, f"b{len(got[True]) + len(got[False])}"
                                                                          f"-{abs(hash(name)) % 1000}"))
            for log_model in (False, True):
                walls = [w for w, _, _ in got[log_model]]
                _, artifacts, model = got[log_model][-1]
                print(f"| {name} | {str(log_model).lower()} | {statistics.median(walls):.1f} s "
                      f"({min(walls):.1f}-{max(walls):.1f}) | {artifacts / 1e6:.2f} MB | {model / 1e6:.2f} MB |")


if __name__ == "__main__":
    main()
