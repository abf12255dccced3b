"""``python -m imgexp.compare``: rebuild a comparison table from MLflow runs (configured by conf/compare.yaml).

Errors end the process with one line on stderr and exit code 1, as ``python -m imgexp`` does.
"""
from __future__ import annotations

import os

import hydra
from omegaconf import DictConfig, OmegaConf

from imgexp import redact
from imgexp.compare.config import register
from imgexp.help import stage_help
from imgexp.errors import one_line_exit, run_app

register()
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # no bar per downloaded thumbnail


@hydra.main(version_base=None, config_path="pkg://imgexp.conf", config_name="compare")
def app(cfg: DictConfig) -> None:
    from imgexp.compare.run import compare  # heavy imports only once Hydra has accepted the command line

    hc = redact.install_for_job()  # as imgexp's app: no URI password in the log or the .hydra/ files
    with one_line_exit():
        settings = OmegaConf.to_object(cfg)  # the schema's range checks
        print(compare(settings, hc.runtime.output_dir).rstrip())  # run dir = output_dir


def main() -> None:
    if stage_help("compare.yaml"):
        return
    run_app(app)


if __name__ == "__main__":
    main()
