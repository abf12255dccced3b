"""``python -m imgexp.compare``: rebuild a comparison table from MLflow runs (configured by conf/compare.yaml).

Errors end the process with one line on stderr and exit code 1, as ``python -m imgexp`` does.
"""
from __future__ import annotations

import os
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from imgexp import redact
from imgexp.compare.config import register
from imgexp.errors import one_line, run_app

register()
FULL_ERROR = os.environ.get("HYDRA_FULL_ERROR") == "1"
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # no bar per downloaded thumbnail


@hydra.main(version_base=None, config_path="pkg://imgexp.conf", config_name="compare")
def app(cfg: DictConfig) -> None:
    from imgexp.compare.run import compare  # heavy imports only once Hydra has accepted the command line

    redact.install()  # as imgexp's app: no URI password in the log or the .hydra/ files
    hc = HydraConfig.get()
    if hc.output_subdir is not None:
        redact.mask_files(Path(hc.runtime.output_dir) / hc.output_subdir)
    try:
        settings = OmegaConf.to_object(cfg)  # the schema's range checks
        print(compare(settings, HydraConfig.get().runtime.output_dir).rstrip())  # run dir = output_dir
    except Exception as err:
        if FULL_ERROR:
            raise
        raise SystemExit(one_line(err)) from err


def main() -> None:
    run_app(app)


if __name__ == "__main__":
    main()
