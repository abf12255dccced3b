"""``python -m imgexp.evaluate run=<run id | model URI> [data=<set> data.root=...] [split=test|val]``: test a
run's MLflow model on its own data (its config's ``data``) or on another data set, with the metrics, per-class
table and confusion plot of training, logged as a new MLflow run tagged with the evaluated run
(``imgexp.evaluated_run``); its params are the trained run's, with ``data.*`` those evaluated on and
``evaluation.trained_on`` the training data's name (``compare columns=[evaluation.trained_on,data]``).
Configured by conf/evaluate.yaml."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import hydra
from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from imgexp import redact
from imgexp.config import ConfigError, require, require_choice
from imgexp.help import stage_help
from imgexp.errors import one_line_exit, run_app
from imgexp.register import register

log = logging.getLogger(__name__)
EVALUATED_TAG = "imgexp.evaluated_run"  # on an evaluation run: the run whose model it tested


@dataclass
class EvaluateConfig:
    run: str = MISSING  # a run id, runs:/<run id>/model, models:/<name>/<version>, or a model folder
    data: Any = None  # a data group option (data=cifar10 data.root=...); None: the evaluated run's data
    split: str = "test"  # test | val
    batch: Optional[int] = None  # None: the evaluated run's batch
    topk: int = 2
    device: str = "auto"
    tracking_uri: Optional[str] = None  # None: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db here
    experiment: Optional[str] = None  # None: the evaluated run's experiment
    output_dir: str = MISSING

    def __post_init__(self) -> None:
        require_choice(self.split, ("test", "val"), "split")
        require(self.batch is None or self.batch >= 1, "batch", "must be >= 1")
        require(self.topk >= 1, "topk", "must be >= 1")


ConfigStore.instance().store(name="evaluate_schema", node=EvaluateConfig)


def label_map(data_names: list[str], model_names: list[str]):
    """Each data class's index among the model's classes; one clear line when some are not the model's."""
    import torch

    unknown = [n for n in data_names if n not in model_names]
    if unknown:
        raise ConfigError("data", f"classes {', '.join(unknown[:10])}{' ...' * (len(unknown) > 10)} are not among "
                                  f"the model's {len(model_names)} classes ({', '.join(model_names[:10])}"
                                  f"{' ...' * (len(model_names) > 10)})")
    return torch.tensor([model_names.index(n) for n in data_names])


def logits_of(model, batches, mapping):
    """The model's logits and the (model-indexed) labels of model-ready batches."""
    import torch

    xs, ys = [], []
    with torch.no_grad():
        for x, y in batches:
            xs.append(model(x).float().cpu())
            ys.append(mapping[y.cpu()])
    return torch.cat(xs), torch.cat(ys)


def evaluate(cfg: EvaluateConfig, data_node: Optional[DictConfig], output_dir: str | Path) -> str:
    """Evaluate ``cfg.run``'s model on ``data_node`` (None: its own data); returns the printed summary."""
    import torch.nn.functional as F

    from imgexp.config import flat_params
    from imgexp.report import summary_table
    from imgexp.runtime import resolve_device
    from imgexp.tracking.rebuild import rebuild
    from imgexp.tracking.store import ROLE_TAG, open_store, tracking_uri
    from imgexp.tracking.tracker import start_run
    from imgexp.train.metrics import classification_metrics, confusion_counts, confusion_table, per_class_table

    uri = tracking_uri(cfg.tracking_uri)
    client = open_store(uri)
    rebuilt = rebuild(client, uri, cfg.run, resolve_device(cfg.device), data_node, cfg.batch)
    classifier, trained_run, trained, data_cfg, data = (rebuilt.classifier, rebuilt.run, rebuilt.config,
                                                       rebuilt.data_cfg, rebuilt.data)
    spec, run_id = classifier.spec, trained_run.info.run_id
    mapping = label_map(data.info.class_names, spec.class_names)
    logits, targets = logits_of(classifier.model, rebuilt.model_ready(cfg.split), mapping)
    metrics = {f"{cfg.split}/loss": F.cross_entropy(logits, targets).item(),
               **classification_metrics(logits, targets, cfg.split, cfg.topk)}
    params = {**trained_run.data.params,
              **{k: v for k, v in flat_params(OmegaConf.create({"data": data_cfg})).items()},
              "evaluation.trained_on": trained.data.name, "evaluation.split": cfg.split,
              "evaluation.model": cfg.run}
    experiment = cfg.experiment or client.get_experiment(trained_run.info.experiment_id).name
    name = f"evaluate {trained_run.info.run_name} on {data_cfg.name} {cfg.split}"
    tags = {EVALUATED_TAG: run_id, ROLE_TAG: "evaluation", "imgexp.model": spec.model["name"],
            "imgexp.data": data_cfg.name}
    if trained_run.info.lifecycle_stage == "deleted":  # the run's description in MLflow's UI
        tags["mlflow.note.content"] = f"Evaluates the model of run {run_id}, which is deleted in MLflow."
    with start_run(True, uri, experiment, name, params, tags, spool_dir=Path(output_dir) / "mlflow_spool") as tracker:
        split = {"test": 2, "val": 1}[cfg.split]
        tracker.log_datasets([data.records[split]])
        tracker.log_metrics(metrics)
        counts = confusion_counts(logits, targets)
        names = spec.class_names
        tracker.log_text(per_class_table(counts, names).to_csv(index=False), "metrics/per_class.csv")
        confusion = confusion_table(counts, names)
        tracker.log_text(confusion.to_csv(), "metrics/confusion_matrix.csv")
        from imgexp.analysis import confusion_figure
        from imgexp.analysis.pyplot import plt

        figure = confusion_figure(confusion)
        tracker.log_figure(figure, "plots/confusion_matrix.png")
        plt.close(figure)
    return (f"{spec.model['name']} of run {run_id} on {data_cfg.name} ({cfg.split}, {len(targets)} images)\n"
            f"{summary_table(metrics)}\nresults: {tracker.where()}")


@hydra.main(version_base=None, config_path="pkg://imgexp.conf", config_name="evaluate")
def app(cfg: DictConfig) -> None:
    hc = redact.install_for_job()
    with one_line_exit():
        settings = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(EvaluateConfig),
                                                       {k: v for k, v in cfg.items() if k != "data"}))
        print(evaluate(settings, cfg.data, hc.runtime.output_dir))


def main() -> None:
    if stage_help("evaluate.yaml"):
        return
    register()
    run_app(app)


if __name__ == "__main__":
    main()
