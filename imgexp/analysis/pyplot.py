"""matplotlib's pyplot on the Agg backend: imgexp draws to files, never to windows (a cluster node has no
display). The one place the backend is chosen; every module that draws imports ``plt`` from here."""
import matplotlib

matplotlib.use("Agg")
from matplotlib import pyplot as plt  # noqa: E402

__all__ = ["plt"]
