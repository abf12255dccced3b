"""``python -m imgexp`` / ``imgexp``: the Hydra app.

Errors end the process with one line on stderr and exit code 1; ``HYDRA_FULL_ERROR=1`` shows the
traceback instead. In a multirun, a job's error is left to the sweeper, which records it.
"""
from __future__ import annotations

import os
import sys

os.environ.setdefault("TORCH_CPP_LOG_LEVEL", "FATAL")  # torch's C++ log lines (c10d's socket retries, with their
# backtraces) go to stderr past Python's logging; the errors behind them reach Python and end in imgexp's one line.
# Read once, as torch loads: TORCH_CPP_LOG_LEVEL=WARNING shows them

import hydra  # noqa: E402
from hydra.types import RunMode
from omegaconf import DictConfig

from imgexp import redact
from imgexp.register import register
from imgexp.errors import one_line, run_app

FULL_ERROR = os.environ.get("HYDRA_FULL_ERROR") == "1"


@hydra.main(version_base=None, config_path="pkg://imgexp.conf", config_name="config")
def app(cfg: DictConfig) -> float:
    from imgexp.run import run  # heavy imports only once Hydra has accepted the command line

    hc = redact.install_for_job()  # Hydra has just configured this job's logging, and written its .hydra/
    # files: no URI password in either
    try:
        return run(cfg, hc.runtime.output_dir, hc.overrides.task)
    except KeyboardInterrupt as err:
        if getattr(err, "chain", None):  # the run is closed and resumable: now e.g. submitit's requeue
            err.chain(err.signum, None)
        raise
    except Exception as err:
        if FULL_ERROR or hc.mode == RunMode.MULTIRUN:
            raise
        raise SystemExit(one_line(err)) from err


def main() -> None:
    """The ``imgexp`` console script; ``imgexp compare|predict|evaluate ...`` run those stages."""
    if sys.argv[1:2] in (["compare"], ["predict"], ["evaluate"]):
        import importlib

        module = "imgexp.compare.__main__" if sys.argv[1] == "compare" else f"imgexp.{sys.argv[1]}"
        stage = importlib.import_module(module)
        sys.argv = [sys.argv[0], *sys.argv[2:]]
        stage.main()
        return
    if "--help" in sys.argv[1:] or "-h" in sys.argv[1:]:
        from imgexp.help import text

        print(text())
        return
    register()
    run_app(app)


if __name__ == "__main__":
    main()
