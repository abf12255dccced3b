"""Plots drawn from a run's results and its model: each returns a matplotlib figure (or an HTML page) for the
tracker to store; the caller closes figures (``plt.close(fig)``).

The names below are imported on first use: matplotlib, seaborn and pandas cost a run's start a second, and
the config schema (:mod:`imgexp.analysis.schema`) is read long before anything is drawn."""
import importlib

EXPORTS = {
    "cam": ("cam_grid_figure", "class_cam_figures", "correct_wrong_figure", "default_cam_layer", "depth_figure",
            "depth_layers", "grad_cam", "grad_cams"),  # not cam(): imgexp.analysis.cam is the module
    "confusion": ("confusion_figure",),
    "curves": ("learning_curves_figure",),
    "feature_maps": ("feature_maps_figure",),
    "tsne": ("default_layers", "embedding_figure", "embedding_html", "layer_features", "tsne_embed", "tsne_figure",
             "tsne_html"),
}
MODULE_OF = {name: module for module, names in EXPORTS.items() for name in names}
__all__ = sorted(MODULE_OF)


def __getattr__(name: str):
    if name not in MODULE_OF:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{MODULE_OF[name]}"), name)
