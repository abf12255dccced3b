"""A trained model as a classifier of new images: the best weights (a state dict) and the run's preprocessing
(size, channels, normalization, class names) in a folder, rebuilt from imgexp's model registry. This is the
data of the MLflow model a run logs (:mod:`imgexp.tracking.logged_model`): MLflow loads it through
:func:`_load_pyfunc` in this installed module, so loading runs no code from the artifact store and unpickles
nothing (``torch.load(weights_only=True)`` and JSON).

Images come as arrays or tensors of integer (0..255) or float (0..1, torchvision's ``ToTensor`` scale) pixels,
(H, W), (H, W, C) or a batch (N, H, W[, C]), or as a list of such images of any sizes; pixels out of their
range are refused (a ``ValueError``, one line), never cast. Each image is converted to the model's channels,
resized (bilinear, antialiased) to the size the run stored its images at, centre-cropped to the size it
trained at, and normalized.
"""
from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F

SPEC_FILE, WEIGHTS_FILE = "imgexp_model.json", "weights.pt"
FORMAT = 1  # of the spec file
Image = Union[np.ndarray, torch.Tensor]


@dataclass
class Spec:
    """What rebuilds the model and prepares its input."""

    model: dict  # the run's ``model`` config, ``pretrained`` and ``weights`` off: the weights are here
    channels: int
    size: tuple[int, int]  # (H, W) the model takes
    stored: tuple[int, int]  # (H, W) images are resized to before the centre crop (``data.cache_size``)
    mean: list[float]  # per channel, 0..255 units
    std: list[float]
    class_names: list[str]
    run_id: str = ""
    format: int = FORMAT

    @classmethod
    def read(cls, folder: Path) -> "Spec":
        raw = json.loads((folder / SPEC_FILE).read_text())
        if raw.get("format") != FORMAT:
            raise ValueError(f"{folder / SPEC_FILE}: model format {raw.get('format')!r}, this imgexp reads {FORMAT}")
        return cls(**{**raw, "size": tuple(raw["size"]), "stored": tuple(raw["stored"])})


def literal(value):
    """``value`` (a spec's ``model``, saved resolved) with every ``${`` escaped: OmegaConf reads it as written,
    never resolving an interpolation (``${oc.env:SECRET}`` would put the variable's value in an error line)."""
    if isinstance(value, dict):
        return {k: literal(v) for k, v in value.items()}
    if isinstance(value, list):
        return [literal(v) for v in value]
    return value.replace("${", "\\${") if isinstance(value, str) else value


def save(folder: str | Path, weights: str | Path, spec: Spec) -> Path:
    """Write the classifier folder: ``weights`` (a state dict file, copied) and the spec."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(weights, folder / WEIGHTS_FILE)
    (folder / SPEC_FILE).write_text(json.dumps(asdict(spec), indent=1))
    return folder


def to_batch(images: Union[Image, Sequence[Image]], channels: int = 3) -> list[torch.Tensor]:
    """Images as a list of (C, H, W) uint8 or float (0..1) tensors (see :func:`pixels`), channels as given. An
    array of 3 dimensions is a batch (N, H, W) for a model of ``channels`` 1, else a batch only if its last is
    not a channel count. An object array is a list of images, or same-size images of numbers."""
    if isinstance(images, np.ndarray) and images.dtype == object and images.ndim > 1:
        images = np.array(images.tolist())  # np.array(same-size images, dtype=object): numbers, typed again
    if not isinstance(images, (np.ndarray, torch.Tensor, list, tuple)):
        raise ValueError(f"images must be an array or tensor (N, H, W[, C]) or a list of images, "
                         f"got {type(images).__name__}")
    if isinstance(images, (np.ndarray, torch.Tensor)) and images.dtype != object and images.ndim in (3, 4) and (
            images.ndim == 4 or channels == 1 or images.shape[-1] not in (1, 3, 4)):
        images = list(images)  # a batch (N, H, W, C) or (N, H, W)
    elif isinstance(images, (np.ndarray, torch.Tensor)) and images.dtype != object:
        images = [images]
    out = []
    for image in images:
        t = pixels(image)
        if t.ndim == 2:
            t = t.unsqueeze(-1)
        if t.ndim != 3 or not t.numel():
            raise ValueError(f"an image must be (H, W) or (H, W, C) pixels, got shape {tuple(t.shape)}")
        out.append(t.permute(2, 0, 1))
    return out


def pixels(image: Image) -> torch.Tensor:
    """``image`` as a uint8 tensor if its pixels are integers 0..255, as is if floats in 0..1; any other pixels
    are a ``ValueError`` naming their range (a float 0..255 image, cast, would be a confident wrong answer)."""
    if not isinstance(image, torch.Tensor):
        array = np.asarray(image)
        if array.dtype == object:
            array = np.array(array.tolist())
        if array.dtype.kind not in "uif":
            raise ValueError(f"pixels must be integers 0..255 or floats 0..1, got {array.dtype} values")
        image = torch.as_tensor(array.astype(np.int64) if array.dtype.kind == "u" and array.itemsize > 1 else array)
    if image.dtype == torch.bool or image.is_complex():
        raise ValueError(f"pixels must be integers 0..255 or floats 0..1, got {image.dtype}")
    if not image.numel():
        return image
    low, high = image.min().item(), image.max().item()
    if image.is_floating_point():
        if not (0.0 <= low and high <= 1.0):  # NaN fails too
            raise ValueError(f"float pixels are read as 0..1 (torchvision's ToTensor scale), these are "
                             f"{low:g}..{high:g}: send integers 0..255, or floats divided by 255")
        return image
    if low < 0 or high > 255:
        raise ValueError(f"integer pixels must be 0..255, these are {low}..{high}")
    return image.to(torch.uint8)


class Classifier:
    """The model in eval mode on ``device`` and its preprocessing."""

    def __init__(self, folder: str | Path, device: str | torch.device = "cpu") -> None:
        from omegaconf import OmegaConf

        from imgexp.data import DataInfo
        from imgexp.models import create_model

        folder = Path(folder)
        self.spec = spec = Spec.read(folder)
        self.device = torch.device(device)
        info = DataInfo(spec.channels, spec.size[0], spec.size[1], len(spec.class_names), spec.class_names)
        self.model = create_model(OmegaConf.create(literal(spec.model)), info)
        self.model.load_state_dict(torch.load(folder / WEIGHTS_FILE, map_location="cpu", weights_only=True))
        self.model.to(self.device).eval()
        self.mean = torch.tensor(spec.mean, device=self.device).view(1, -1, 1, 1)
        self.std = torch.tensor(spec.std, device=self.device).view(1, -1, 1, 1)

    @property
    def class_names(self) -> list[str]:
        return self.spec.class_names

    def stack(self, items: list[torch.Tensor]) -> torch.Tensor:
        """Model-ready (N, C, H, W) float batch of (C, H, W) images (see :func:`to_batch`) on the device."""
        return torch.cat([self.normalize(self.fit(x.to(self.device).unsqueeze(0))) for x in items])

    def fit(self, x: torch.Tensor) -> torch.Tensor:
        """(1, C', H', W') uint8 or float (0..1) -> float 0..255 in the model's channels, at the stored size,
        centre-cropped."""
        from imgexp.data import to_channels

        x = x.float() * 255.0 if x.is_floating_point() else x.float()
        x = to_channels(x[:, :3] if x.shape[1] == 4 else x, self.spec.channels)
        if tuple(x.shape[2:]) != self.spec.stored:
            x = F.interpolate(x, size=self.spec.stored, mode="bilinear", antialias=True, align_corners=False)
        from imgexp.data.augment import center_crop

        return center_crop(x, self.spec.size)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std

    @torch.no_grad()
    def probabilities(self, x: torch.Tensor, batch: int = 256) -> torch.Tensor:
        """Softmax of the model on a prepared batch, in chunks of ``batch``."""
        return torch.cat([self.model(chunk).float().softmax(1) for chunk in x.split(batch)]).cpu()

    def predict(self, images: Union[Image, Sequence[Image]], batch: int = 256):
        """A pandas DataFrame: ``class``, ``probability`` and one ``prob_<class>`` column per class."""
        items = to_batch(images, self.spec.channels)
        if not items:
            return probability_table(torch.empty(0, len(self.class_names)), self.class_names)
        probs = torch.cat([self.probabilities(self.stack(items[i:i + batch]), batch)
                           for i in range(0, len(items), batch)])
        return probability_table(probs, self.class_names)


def probability_table(probs: torch.Tensor, class_names: list[str]):
    import pandas as pd

    top = probs.max(1)
    table = pd.DataFrame({"class": [class_names[i] for i in top.indices.tolist()],
                          "probability": top.values.double().numpy()})
    return pd.concat([table, pd.DataFrame(probs.double().numpy(), columns=[f"prob_{n}" for n in class_names])],
                     axis=1)


class PyfuncClassifier:
    """What ``mlflow.pyfunc.load_model`` wraps: ``predict(images)`` -> :meth:`Classifier.predict`."""

    def __init__(self, classifier: Classifier) -> None:
        self.classifier = classifier

    def predict(self, model_input, params=None):
        """Bad images are MLflow's invalid-parameter error: HTTP 400 with their one line when served."""
        try:
            return self.classifier.predict(model_input)
        except ValueError as err:
            from mlflow.exceptions import MlflowException

            raise MlflowException.invalid_parameter_value(str(err)) from None


def _load_pyfunc(data_path: str) -> PyfuncClassifier:
    """MLflow's entry point (``loader_module: imgexp.classifier``); ``data_path`` is the classifier folder."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    return PyfuncClassifier(Classifier(data_path, device))
