"""Time of the end-of-run analysis on 2,000 test images (run by hand): small_cnn (untrained: the time does
not depend on the weights) on the shared CIFAR-10 folder, `analysis=default` and `analysis=full`.

    python benchmarks/analysis_time.py
"""
from __future__ import annotations

import time
from pathlib import Path

import matplotlib.pyplot as plt
from hydra import compose, initialize_config_module

from imgexp.analysis.report import final_artifacts
from imgexp.register import register
from imgexp.analysis.sample import analysis_sample
from imgexp.build import build

ROOT = Path(__file__).resolve().parents[2] / "shared/datasets/cifar10"


def main() -> None:
    register()
    for option in ("default", "full"):
        with initialize_config_module(config_module="imgexp.conf", version_base=None):
            cfg = compose("config", ["data=cifar10", f"data.root={ROOT}", f"analysis={option}", "device=cpu",
                                     "tracking=none"])
        job = build(cfg)
        x, y = analysis_sample(job.data.test, cfg.analysis.points, cfg.seed)
        start = time.perf_counter()
        artifacts = final_artifacts(job.model, x, y, job.data.info.class_names, cfg.analysis, "timing")
        seconds = time.perf_counter() - start
        for item in artifacts.values():
            if not isinstance(item, str):
                plt.close(item)
        print(f"| analysis={option} | {len(y)} points | {len(artifacts)} artifacts | {seconds:.1f} s |")


if __name__ == "__main__":
    main()
