"""Plots drawn from a run's results; each returns a matplotlib figure for the tracker to store."""
from imgexp.analysis.confusion import confusion_figure
from imgexp.analysis.curves import learning_curves_figure

__all__ = ["confusion_figure", "learning_curves_figure"]
