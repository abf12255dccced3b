"""The schema of ``conf/compare.yaml``, registered in Hydra's ConfigStore as ``compare_schema``."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

from imgexp.config import as_list, require, require_choice

# Report B's rows: metric -> row label.
REPORT_B = {
    "train/acc": "train acc",
    "train/loss": "train loss",
    "val/acc": "valid acc",
    "val/loss": "valid loss",
    "test/loss": "test loss",
    "test/acc": "top-1 acc",
    "test/top2": "top-2 acc",
    "test/f1_macro": "macro F1",
}
TESTS = ("t", "permutation", "welch")  # the p-value of a difference over paired seeds (imgexp.compare.stats)


@dataclass
class CompareConfig:
    """Which runs (every selector given narrows the selection), how to tabulate them, where outputs go."""

    tracking_uri: Optional[str] = None  # None: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db here
    experiment: Any = None  # a name or a list of names; None: every experiment
    sweep: Optional[str] = None  # a parent run id, an imgexp.sweep_id tag value, or "latest"
    tags: Any = None  # {tag: value}: runs carrying all of these tags
    filter: Optional[str] = None  # an MLflow filter string, e.g. "params.epochs = '30'"
    evaluations: bool = False  # count imgexp.evaluate's runs too (or tags={imgexp.role: evaluation})
    columns: Any = None  # a config key or a list of keys (one column per combination); None: the varying ones
    metrics: List[str] = field(default_factory=lambda: list(REPORT_B))  # the rows
    labels: Dict[str, str] = field(default_factory=lambda: dict(REPORT_B))  # metric -> row label
    epoch: str = "best"  # per-epoch metrics at val/best_epoch (best) or at the last epoch (last)
    baseline: Optional[str] = None  # a column label, or "best" (the first metric's best mean): differences to it
    test: str = "t"  # paired seeds' p: paired t-test (t), exact sign-flip permutation or welch; unpaired: Welch
    digits: int = 4
    thumbnails: int = 4  # plot PNGs shown per run in the HTML report
    ui_url: Optional[str] = None  # MLflow UI for run links; None: the tracking URI if http(s), else mlflow ui's
    log_to_parent: bool = True  # log the outputs to the sweep's parent run under compare/
    output_dir: str = MISSING  # where the outputs go; also Hydra's run dir (conf/compare.yaml)

    def __post_init__(self) -> None:
        require_choice(self.epoch, ("best", "last"), "epoch")
        require_choice(self.test, TESTS, "test")
        require(all(isinstance(c, str) for c in as_list(self.columns)), "columns",
                "must be a config key or a list of keys")
        require(all(isinstance(e, str) for e in as_list(self.experiment)), "experiment", "must be names")
        require(self.tags is None or isinstance(self.tags, dict), "tags", "must be {tag: value, ...}")
        require(len(self.metrics) > 0, "metrics", "must name at least one metric")
        require(0 <= self.digits <= 10, "digits", "must be in 0..10")
        require(self.thumbnails >= 0, "thumbnails", "must be >= 0")


def register() -> None:
    ConfigStore.instance().store(name="compare_schema", node=CompareConfig)
