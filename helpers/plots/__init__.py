"""Every figure of the series, one function each.

Each ``plot_*`` function takes plain data (the scan table, arrays, dicts), draws one figure in
the series' house style and returns the :class:`matplotlib.figure.Figure`; with ``save=`` it
also writes a PNG (about 100 dpi, written to a temporary name and renamed, so a crash never
leaves half a file). Nothing here calls ``plt.show()``: a notebook displays the returned figure
when it is the last expression of a cell.

Where things live (import them from here, ``from helpers.plots import plot_roc``):

* :mod:`helpers.plots.style`: the house style and class colours, :func:`figures_dir`,
  :func:`save_figure` and the machinery every figure shares (styling, closing, saving, checks).
* :mod:`helpers.plots.data`: the dataset figures that are more than a seaborn one-liner (class
  balance and image sizes for the README, image grids).
* :mod:`helpers.plots.results`: the training and evaluation figures (history, confusion
  matrix, ROC and precision-recall curves, probability histogram, Grad-CAM grid).
"""

from helpers.plots.data import (
    plot_class_balance,
    plot_image_grid,
    plot_size_histograms,
)
from helpers.plots.results import (
    plot_confusion_matrix,
    plot_confusion_pair,
    plot_gradcam_grid,
    plot_history,
    plot_pr,
    plot_probability_histogram,
    plot_roc,
)
from helpers.plots.style import (
    CLASS_COLORS,
    DPI,
    MAX_PNG_BYTES,
    STYLE,
    figures_dir,
    save_figure,
)

__all__ = [
    "CLASS_COLORS",
    "DPI",
    "MAX_PNG_BYTES",
    "STYLE",
    "figures_dir",
    "plot_class_balance",
    "plot_confusion_matrix",
    "plot_confusion_pair",
    "plot_gradcam_grid",
    "plot_history",
    "plot_image_grid",
    "plot_pr",
    "plot_probability_histogram",
    "plot_roc",
    "plot_size_histograms",
    "save_figure",
]
