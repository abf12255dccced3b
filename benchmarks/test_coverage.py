"""The README's test command against the full suite (CI's): which share of the lines the full suite covers
the README's command covers too. Coverage follows subprocesses (pyproject.toml, [tool.coverage.run]).
Run by hand from the repository root, nothing else running:

    .venv/bin/python benchmarks/test_coverage.py full     # CI's suite (pytest -q, then -m slurm), ~40 min
    .venv/bin/python benchmarks/test_coverage.py readme   # the README's command, ~5 min
    .venv/bin/python benchmarks/test_coverage.py compare  # the share, and the files that miss most

The data lands in benchmarks/coverage/ (ignored by git). Times under coverage are longer than without;
the README's figures are timed without it.
"""
import os
import subprocess
import sys
import time
from pathlib import Path

from coverage import CoverageData

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "benchmarks" / "coverage"
README_COMMAND = ["-q", "-m", "not slow"]  # the README's test command, after `python -m pytest`
FULL_COMMANDS = [["-q"], ["-q", "-m", "slurm"]]


def run(name: str, commands: list[list[str]]) -> None:
    DATA.mkdir(exist_ok=True)
    data = DATA / name
    for stale in DATA.glob(f"{name}*"):
        stale.unlink()
    start = time.monotonic()
    for args in commands:
        subprocess.run([sys.executable, "-m", "pytest", *args, "--cov", "--cov-append", "--cov-report=",
                        "--cov-context=test", "--durations=0"],
                       cwd=ROOT, env={**os.environ, "COVERAGE_FILE": str(data)}, check=False)
    print(f"{name}: {time.monotonic() - start:.0f} s under coverage")


def lines(name: str) -> dict[str, set[int]]:
    data = CoverageData(str(DATA / name))
    data.read()
    return {path: set(data.lines(path) or ()) for path in data.measured_files()}


def compare() -> None:
    full, readme = lines("full"), lines("readme")
    total = sum(len(covered) for covered in full.values())
    shared = sum(len(covered & readme.get(path, set())) for path, covered in full.items())
    print(f"the full suite covers {total} lines; the README's command {shared} of them: {shared / total:.1%}")
    missed = sorted(((len(covered - readme.get(path, set())), path) for path, covered in full.items()), reverse=True)
    for count, path in missed[:15]:
        print(f"  {count:5d} lines missed in {Path(path).relative_to(ROOT)}")


if __name__ == "__main__":
    stage = sys.argv[1] if len(sys.argv) > 1 else "compare"
    if stage == "full":
        run("full", FULL_COMMANDS)
    elif stage == "readme":
        run("readme", [README_COMMAND])
    else:
        compare()
