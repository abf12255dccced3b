"""Plots drawn from a run's results and its model: each returns a matplotlib figure (or an HTML page) for the
tracker to store; the caller closes figures (``plt.close(fig)``)."""
from imgexp.analysis.cam import (cam, cam_grid_figure, class_cam_figures, correct_wrong_figure, default_cam_layer,
                                 depth_figure, depth_layers, grad_cam, grad_cams)
from imgexp.analysis.confusion import confusion_figure
from imgexp.analysis.curves import learning_curves_figure
from imgexp.analysis.feature_maps import feature_maps_figure
from imgexp.analysis.tsne import (default_layers, embedding_figure, embedding_html, layer_features, tsne_embed,
                                  tsne_figure, tsne_html)

__all__ = ["cam", "cam_grid_figure", "class_cam_figures", "confusion_figure", "correct_wrong_figure",
           "default_cam_layer", "default_layers", "depth_figure", "depth_layers", "embedding_figure",
           "embedding_html", "feature_maps_figure", "grad_cam", "grad_cams", "layer_features",
           "learning_curves_figure", "tsne_embed", "tsne_figure", "tsne_html"]
