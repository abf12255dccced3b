"""``python -m imgexp`` / ``imgexp``: the Hydra app.

Errors end the process with one line on stderr and exit code 1; ``HYDRA_FULL_ERROR=1`` shows the
traceback instead. In a multirun, a job's error is left to the sweeper, which records it.
"""
from __future__ import annotations

import os
import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from imgexp.config import register

register()
FULL_ERROR = os.environ.get("HYDRA_FULL_ERROR") == "1"


def one_line(err: BaseException) -> str:
    """First line of the error plus, for config errors, the first line of their OmegaConf cause."""
    text = str(err).strip()
    parts = [text.splitlines()[0] if text else type(err).__name__]
    cause = getattr(err.__cause__, "msg", None)
    if cause:
        parts.append(str(cause).strip().splitlines()[0])
    options = getattr(err, "options", None)  # Hydra's MissingConfigException lists a group's options
    if options:
        parts.append(f"(available: {', '.join(options)})")
    return "imgexp: error: " + " ".join(parts)


@hydra.main(version_base=None, config_path="pkg://imgexp.conf", config_name="config")
def app(cfg: DictConfig) -> float:
    from imgexp.run import run  # heavy imports only once Hydra has accepted the command line

    hc = HydraConfig.get()
    try:
        return run(cfg, hc.runtime.output_dir, hc.overrides.task)
    except Exception as err:
        if FULL_ERROR or hc.mode == RunMode.MULTIRUN:
            raise
        raise SystemExit(one_line(err)) from err


def main() -> None:
    if FULL_ERROR:
        app()
        return
    os.environ["HYDRA_FULL_ERROR"] = "1"  # Hydra then raises composition errors to us instead of printing them
    try:
        app()
    except Exception as err:  # noqa: BLE001 - every error becomes one line and a non-zero exit
        print(one_line(err), file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
