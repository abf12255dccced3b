"""Start-up: seconds from launching ``python -m imgexp tracking=none epochs=1 analysis=none progress=false``
(digits) to the log line that precedes its first epoch, and to the end of the process; ``--help`` against
``python -c "import torch"``. Medians of --repeat runs, each in a fresh interpreter.

    python benchmarks/startup.py --repeat 5
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time

RUN = [sys.executable, "-m", "imgexp", "tracking=none", "epochs=1", "analysis=none", "progress=false"]


def timed_run(cwd: str) -> tuple[float, float]:
    start = time.perf_counter()
    proc = subprocess.Popen(RUN, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    before_epoch = float("nan")
    for line in proc.stdout:
        if "trainable parameters" in line:  # logged just before the trainer starts its first epoch
            before_epoch = time.perf_counter() - start
    assert proc.wait() == 0
    return before_epoch, time.perf_counter() - start


def timed(cmd: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as cwd:
        runs = [timed_run(cwd) for _ in range(args.repeat)]
    torch_s = statistics.median(timed([sys.executable, "-c", "import torch"]) for _ in range(args.repeat))
    help_s = statistics.median(timed([sys.executable, "-m", "imgexp", "--help"]) for _ in range(args.repeat))
    print(f"before the first epoch: {statistics.median(r[0] for r in runs):.2f} s; whole run "
          f"{statistics.median(r[1] for r in runs):.2f} s")
    print(f"import torch {torch_s:.2f} s; --help {help_s:.2f} s ({help_s / torch_s:.2f}x)")


if __name__ == "__main__":
    main()
