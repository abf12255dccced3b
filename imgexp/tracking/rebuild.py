"""Tracking, middle layer (uses logged_model.py): a finished run rebuilt from MLflow: its logged model, its resolved config, and data (its own, or another
data set) prepared as the model was trained: at the model's size and channels, in batches of float 0..255
that :meth:`~imgexp.classifier.Classifier.normalize` makes model-ready. What ``imgexp.evaluate`` tests and a
sweep's end analyses."""
from __future__ import annotations

import tempfile
from dataclasses import dataclass
from typing import Any, Iterator, Optional

import torch
from omegaconf import DictConfig, OmegaConf

from imgexp import data as data_lib
from imgexp.classifier import Classifier, Spec
from imgexp.config import ConfigError
from imgexp.redact import mask
from imgexp.tracking.logged_model import model_folder, warn_if_deleted


@dataclass
class Rebuilt:
    classifier: Classifier
    run: Any  # the trained MLflow run
    config: DictConfig  # its resolved config (its config.yaml artifact)
    data_cfg: DictConfig  # the data prepared
    data: data_lib.Data

    def model_ready(self, split: str) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """A split's batches, normalized for the model."""
        for x, y in getattr(self.data, split):
            yield self.classifier.normalize(x), y


def trained_config(client, run_id: str) -> DictConfig:
    """A run's resolved config (its ``config.yaml`` artifact)."""
    with tempfile.TemporaryDirectory() as tmp:
        return OmegaConf.load(client.download_artifacts(run_id, "config.yaml", tmp))


def prepared(cfg: DictConfig, spec: Spec) -> DictConfig:
    """A data config at the model's size, stored size and channels."""
    data = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    (h, w), (sh, sw) = spec.size, spec.stored
    if h == w:
        data.image_size, data.cache_size = h, (sh if (sh, sw) != (h, w) else None)
    data.channels = spec.channels
    return data


def rebuild(client, uri: str, reference: str, device: torch.device, data_node: Optional[DictConfig] = None,
            batch: Optional[int] = None, key: str = "run") -> Rebuilt:
    """Run ``reference``'s model (a run id or model URI: see :func:`~imgexp.tracking.logged_model.model_folder`)
    and ``data_node``'s data (None: the run's own), in batches of ``batch`` (None: the run's); errors name
    config key ``key``."""
    from imgexp.data.schema import AugmentationConfig, NormalizationConfig

    with tempfile.TemporaryDirectory() as tmp:
        classifier = Classifier(model_folder(reference, uri, tmp, key), device)
    run_id = classifier.spec.run_id
    try:
        run = client.get_run(run_id)
    except Exception:  # noqa: BLE001 - a model folder or URI whose run is in another store
        raise ConfigError(key, f"the model's run {run_id} is not in {mask(uri)}") from None
    warn_if_deleted(run)
    config = trained_config(client, run_id)
    data_cfg = prepared(data_node if data_node is not None else config.data, classifier.spec)
    data = data_lib.build(data_cfg, OmegaConf.structured(AugmentationConfig()),
                          OmegaConf.structured(NormalizationConfig("none")), batch or config.batch, config.seed,
                          device)
    return Rebuilt(classifier, run, config, data_cfg, data)
