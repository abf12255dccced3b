"""Tracking, middle layer (uses store.py): a run's best model as an MLflow logged model (a pyfunc whose ``loader_module`` is :mod:`imgexp.classifier`:
state dict + JSON spec, no pickled code), registration in MLflow's model registry, and the resolution of a
model reference (run id, ``runs:/``, ``models:/``, a folder) to a local classifier folder."""
from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path
from typing import Optional

import numpy as np

from imgexp import __version__
from imgexp.classifier import WEIGHTS_FILE, Classifier, Spec, save
from imgexp.config import ConfigError
from imgexp.errors import describe
from imgexp.redact import mask
from imgexp.tracking.store import BEST_WEIGHTS_TAG, tracking_uri

log = logging.getLogger(__name__)
MODEL_NAME = "model"  # the logged model's name: runs:/<run id>/model


# The modules the loader (imgexp.classifier) imports, shipped as the model's code: it loads where imgexp is not
# installed (tests/test_logged_model.py loads it in a venv of the model's requirements alone)
LOADER_CODE = ("__init__.py", "classifier.py", "config.py", "locks.py", "runtime.py", "data", "models")
LOADER_PACKAGES = ("torch", "torchvision", "numpy", "pandas", "pillow", "omegaconf", "hydra-core", "tqdm")  # theirs


def requirements() -> list[str]:
    """What loading the model needs, pinned to this environment's versions (given, so that MLflow does not
    infer them by loading the model); imgexp itself travels as the model's code (:func:`loader_code`)."""
    from importlib.metadata import version

    return [f"{name}=={version(name).split('+')[0]}" for name in LOADER_PACKAGES]


def loader_code(folder: Path) -> Path:
    """``folder/imgexp``: a copy of :data:`LOADER_CODE` (Python files only), for MLflow's ``code_paths``."""
    import shutil

    import imgexp

    source, package = Path(imgexp.__file__).parent, folder / "imgexp"
    package.mkdir(parents=True)
    for name in LOADER_CODE:
        if (source / name).is_dir():
            shutil.copytree(source / name, package / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(source / name, package / name)
    return package


def signature(spec: Spec):
    """Output only: class, probability, one prob_<class> each. No input schema: MLflow would cast what it
    receives to the schema's dtype before the model sees it (JSON floats 0..1 to uint8 zeros, a confident wrong
    answer), so the model checks its images itself (:func:`imgexp.classifier.pixels`); the input example and
    the model's ``input`` metadata say what it takes."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    outputs = [ColSpec("string", "class"), ColSpec("double", "probability")]
    outputs += [ColSpec("double", f"prob_{n}") for n in spec.class_names]
    return ModelSignature(None, Schema(outputs))


def input_description(spec: Spec) -> str:
    """What the model takes, for its metadata (the signature has no input schema)."""
    layout = "(N, H, W)" if spec.channels == 1 else f"(N, H, W, {spec.channels})"
    return (f"images {layout} of any H and W, integer pixels 0..255 or float 0..1 (others refused), or a list "
            f"of images of several sizes")


def log_model(uri: str, run_id: str, weights: str | Path, spec: Spec, example: np.ndarray) -> Optional[str]:
    """Log ``weights`` with ``spec`` as run ``run_id``'s MLflow model named :data:`MODEL_NAME`, linked to the
    run's step-0 metrics (the test metrics); returns its ``models:/<model id>`` URI, or None (one warning)
    when the store cannot take it: the checkpoints hold the weights anyway."""
    import mlflow
    import mlflow.pyfunc
    from mlflow.models import Model

    began = time.perf_counter()
    mlflow.set_tracking_uri(uri)
    client = mlflow.MlflowClient(uri)
    try:
        run = client.get_run(run_id)  # the model goes to the run's experiment, with the run's params
        model = client.create_logged_model(run.info.experiment_id, MODEL_NAME, run_id, model_type="imgexp",
                                           params={k: v[:1000] for k, v in run.data.params.items()})
        with tempfile.TemporaryDirectory() as tmp:
            data = save(Path(tmp) / "classifier", weights, spec)
            info = Model.log(artifact_path=None, name=MODEL_NAME, flavor=mlflow.pyfunc, run_id=run_id,
                             model_id=model.model_id, loader_module="imgexp.classifier", data_path=str(data),
                             signature=signature(spec), input_example=example,
                             pip_requirements=requirements(), code_paths=[str(loader_code(Path(tmp) / "code"))],
                             step=0, metadata={"imgexp_version": __version__, "input": input_description(spec),
                                               "class_names": spec.class_names})
        client.finalize_logged_model(model.model_id, "READY")
        client.set_tag(run_id, BEST_WEIGHTS_TAG, mask(f"{model.artifact_location}/data/classifier/{WEIGHTS_FILE}"))
    except Exception as err:  # noqa: BLE001 - a server gone, a full store: the run's results stand
        log.warning("the best model was not logged as an MLflow model (%s); its weights are in the run's "
                    "checkpoints/best.pt", describe(err)[:300])
        return None
    log.info("logged the best model as %s (%.1f s)", info.model_uri, time.perf_counter() - began)
    return info.model_uri


def register(uri: str, model_uri: str, name: str, run_id: str) -> str:
    """Register ``model_uri`` as a new version of registered model ``name``; returns ``name/version``."""
    import mlflow

    mlflow.set_tracking_uri(uri)
    version = mlflow.register_model(model_uri, name, tags={"imgexp.run_id": run_id})
    log.info("registered %s as model %r version %s", model_uri, name, version.version)
    return f"{name}/{version.version}"


def model_folder(reference: str, uri: Optional[str], dst: str | Path, key: str = "model") -> Path:
    """The local classifier folder of ``reference``: a run id, ``runs:/<id>/model``, ``models:/<name>/<version>``
    (or ``models:/<model id>``), an MLflow model folder or a classifier folder; downloaded into ``dst``.
    Errors name config key ``key``."""
    import os

    import mlflow

    from imgexp.classifier import SPEC_FILE

    local = Path(reference)
    if not (local / SPEC_FILE).exists() and not (local / "data" / "classifier" / SPEC_FILE).exists():
        if "://" not in reference and ":/" not in reference:
            reference = f"runs:/{reference}/{MODEL_NAME}"
        mlflow.set_tracking_uri(tracking_uri(uri))
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        try:
            local = Path(mlflow.artifacts.download_artifacts(reference, dst_path=str(dst)))
        except Exception as err:  # noqa: BLE001 - no such run or model, no server
            raise ConfigError(key, f"cannot load {reference}: {describe(err)[:300]}") from None
    for folder in (local, local / "data" / "classifier"):
        if (folder / SPEC_FILE).exists():
            return folder
    raise ConfigError(key, f"{reference} is not an imgexp model (no {SPEC_FILE}): log it with imgexp >= 0.2")


def load_classifier(reference: str, uri: Optional[str], device: str = "cpu") -> Classifier:
    """:class:`Classifier` of ``reference`` (see :func:`model_folder`), on ``device``."""
    with tempfile.TemporaryDirectory() as tmp:
        classifier = Classifier(model_folder(reference, uri, tmp), device)
    if Path(reference).exists():  # a folder: no store to ask (nor to create)
        return classifier
    import mlflow

    try:
        run = mlflow.MlflowClient(tracking_uri(uri)).get_run(classifier.spec.run_id)
    except Exception:  # noqa: BLE001 - a model folder whose run is in another store, or none
        return classifier
    warn_if_deleted(run)
    return classifier


def warn_if_deleted(run) -> None:
    """One warning naming ``run`` (whose model is used) if it is deleted in MLflow."""
    if run.info.lifecycle_stage != "deleted":
        return
    log.warning("the model's run %s (%s) is deleted in MLflow: its model loads until the store is cleaned "
                "(mlflow gc); mlflow runs restore --run-id %s brings it back", run.info.run_id, run.info.run_name,
                run.info.run_id)
