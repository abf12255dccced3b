"""Config schema of the analysis group (conf/analysis/): the plots drawn at the end of a run."""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional

from imgexp.config import require


@dataclass
class AnalysisConfig:
    """Plots drawn from the model on a fixed sample of test images, logged under plots/."""

    name: str = "default"
    points: int = 2000  # test images sampled for t-SNE and CAM
    tsne: bool = True
    tsne_layers: Optional[List[str]] = None  # module names; None: the penultimate features; "report_d": 4 layers
    tsne_3d: bool = True  # also a 3D PNG (at the end only)
    tsne_html: bool = False  # and the interactive 3D page (4.6 MB: plotly.js embedded, to work offline)
    tsne_at_best: bool = False  # 2D t-SNE at every new best val/acc epoch (report A's sequence)
    cam: bool = True  # CAM (GAP + linear heads) or Grad-CAM grids: per class, correct vs wrong, by depth
    cam_layer: Optional[str] = None  # None: the last conv
    cam_images: int = 8  # per class and per row
    feature_maps: bool = True
    feature_layers: Optional[List[str]] = None  # None: first and last conv

    def __post_init__(self) -> None:
        require(self.points >= 10, "points", "must be >= 10")
        require(self.cam_images >= 1, "cam_images", "must be >= 1")


SCHEMAS = {"analysis": {"base": AnalysisConfig}}
