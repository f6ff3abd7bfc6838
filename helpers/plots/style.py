"""The machinery behind every figure: house style and colours, saving, input checks, image panels.

Why figures are created with ``plt.subplots`` and then closed before they are returned: creating
them through pyplot lets Jupyter's inline backend register its PNG display for figures, and
closing them removes them from pyplot's list of open figures, so a notebook shows each figure
exactly once (as the cell's value) and a loop drawing hundreds of figures does not leak memory.
A closed figure can still be displayed, drawn and saved.

The class colours are fixed for the whole series (:data:`CLASS_COLORS`), so NORMAL and PNEUMONIA
look the same in every figure. Styling is applied with ``matplotlib.rc_context`` around each
figure (:func:`_styled`), so importing this package changes no global matplotlib setting.
"""

from __future__ import annotations

import functools
import math
import os
import warnings
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from helpers.config import CLASSES, outputs_dir
from helpers.files import atomic_path

DPI = 100
"""Resolution of saved PNGs: enough for a slide, small enough for a git diff."""

MAX_PNG_BYTES = 300_000
"""Saved figures larger than this are re-encoded with a colour palette (see save_figure)."""

CLASS_COLORS: dict[str, str] = {"NORMAL": "#0072B2", "PNEUMONIA": "#D55E00"}
"""One colour per class (Okabe-Ito blue and vermillion: colour-blind safe), in every figure."""

TRAIN_COLOR = "#4D4D4D"
VAL_COLOR = "#009E73"
LR_COLORS: dict[str, str] = {"lr_head": "#CC79A7", "lr_backbone": "#E69F00"}
BEST_COLOR = "#333333"
REFERENCE_COLOR = "#888888"
"""Grey of the reference lines (chance diagonal, no-skill precision)."""

STYLE: dict[str, Any] = {
    "figure.facecolor": "white",
    "axes.facecolor": "white",
    "axes.edgecolor": "#444444",
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "axes.axisbelow": True,
    "grid.color": "#DDDDDD",
    "grid.linewidth": 0.8,
    "axes.titlesize": 12,
    "axes.titleweight": "bold",
    "axes.labelsize": 11,
    "xtick.labelsize": 10,
    "ytick.labelsize": 10,
    "legend.fontsize": 9,
    "legend.frameon": False,
    "figure.titlesize": 13,
    "figure.titleweight": "bold",
    "font.family": "DejaVu Sans",
}
"""The house style, applied per figure with ``rc_context`` (never globally)."""

F = TypeVar("F", bound=Callable[..., Figure])
PathLike = str | os.PathLike[str]


# --------------------------------------------------------------------------------------------
# Saving and styling
# --------------------------------------------------------------------------------------------


def figures_dir() -> Path:
    """Where the series keeps its figures: ``outputs_dir() / "figures"`` (not created here)."""
    return outputs_dir() / "figures"


def save_figure(fig: Figure, path: PathLike) -> Path:
    """Write ``fig`` as a PNG at ``path`` atomically and return the path.

    The PNG is rendered to a temporary file in the same folder (created if needed) and renamed
    over ``path`` only once complete, so readers never see half a file. Figures dominated by
    photographs (X-ray grids, Grad-CAM overlays) can exceed :data:`MAX_PNG_BYTES` as true-colour
    PNGs; those are re-encoded with a dithered colour palette (and, only if still too large,
    scaled down) by :func:`_shrink_png`, with no visible loss at slide size.
    """
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ValueError(f"save_figure writes PNG files; {path} does not end in .png")
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI, facecolor="white")
        if tmp.stat().st_size > MAX_PNG_BYTES:
            _shrink_png(tmp)
    return path


def _shrink_png(path: Path) -> None:
    """Re-encode the PNG at ``path`` in place until it fits in :data:`MAX_PNG_BYTES`.

    First a 256-colour palette with Floyd-Steinberg dithering (dithering keeps heatmap and
    X-ray gradients free of visible bands), then 128 colours, then the same at smaller scales.
    The smallest attempt is kept, with a warning, if even that is too large.
    """
    from PIL import Image  # pillow is a dependency of matplotlib itself

    with Image.open(path) as image:
        rgb = image.convert("RGB")
    for scale in (1.0, 0.85, 0.7, 0.5):
        size = (max(1, round(rgb.width * scale)), max(1, round(rgb.height * scale)))
        resized = rgb if scale == 1.0 else rgb.resize(size, Image.Resampling.LANCZOS)
        for colors in (256, 128):
            palette = resized.quantize(colors=colors, method=Image.Quantize.FASTOCTREE)
            small = resized.quantize(palette=palette, dither=Image.Dither.FLOYDSTEINBERG)
            small.save(path, format="PNG", optimize=True)
            if path.stat().st_size <= MAX_PNG_BYTES:
                return
    warnings.warn(
        f"{path}: {path.stat().st_size:,} bytes even at half size with 128 colours "
        f"(limit {MAX_PNG_BYTES:,}); draw fewer panels",
        stacklevel=3,
    )


def _styled(func: F) -> F:
    """Draw ``func``'s figure inside the house style and take it out of pyplot's figure list.

    Every public ``plot_*`` function goes through this, so style and closing behave the same
    everywhere; each function saves its own figure with :func:`_saved`. When drawing fails
    half-way (bad input found late), the half-drawn figure is closed too, so that Jupyter does
    not display it under the error.
    """

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Figure:
        open_before = set(plt.get_fignums())
        try:
            with matplotlib.rc_context(STYLE):
                fig = func(*args, **kwargs)
                # Jupyter's inline backend, loaded by a kernel's first figure, switches
                # interactive mode on; leaving rc_context would switch it off again, and later
                # figures drawn with pyplot or seaborn would no longer be shown.
                interactive = matplotlib.is_interactive()
            matplotlib.interactive(interactive)
        except BaseException:
            for number in set(plt.get_fignums()) - open_before:
                plt.close(number)
            raise
        plt.close(fig)
        return fig

    return wrapper  # type: ignore[return-value]


def _saved(fig: Figure, save: PathLike | None) -> Figure:
    """Write ``fig`` to ``save`` when a path is given (see :func:`save_figure`); return it."""
    if save is not None:
        save_figure(fig, save)
    return fig


# --------------------------------------------------------------------------------------------
# Input checks: every figure validates its input before drawing, and says what is wrong
# --------------------------------------------------------------------------------------------


def _require_columns(frame: pd.DataFrame, columns: Sequence[str], where: str) -> None:
    """Raise a ValueError naming the function and the columns ``frame`` lacks."""
    if not isinstance(frame, pd.DataFrame):
        raise TypeError(f"{where}: expected a pandas DataFrame, got {type(frame).__name__}")
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(
            f"{where}: the table lacks column(s) {missing}; it has {list(frame.columns)}"
        )


def _check_class_names(labels: Iterable[Any], where: str) -> None:
    """Refuse labels that are not class names (CLASSES), rather than silently miscounting.

    Not :func:`helpers.evaluate._check_labels`, which checks 0/1 targets: this one checks the
    ``label`` column of a scan table, or class names given in place of targets.
    """
    unknown = sorted({str(label) for label in labels} - set(CLASSES))
    if unknown:
        raise ValueError(f"{where}: unknown label(s) {unknown}; expected {list(CLASSES)}")


def _check_confusion(cm: Any, where: str) -> np.ndarray:
    """The confusion matrix as a 2x2 int array of non-negative counts, or a clear error."""
    array = np.asarray(cm)
    if array.shape != (2, 2):
        raise ValueError(f"{where}: expected a 2x2 confusion matrix, got shape {array.shape}")
    if not np.all(np.isfinite(array.astype(float))) or np.any(array < 0):
        raise ValueError(f"{where}: confusion matrix has negative or non-finite entries: {array}")
    if not np.allclose(array, np.round(array)):
        raise ValueError(f"{where}: confusion matrix entries must be whole counts: {array}")
    return np.round(array).astype(int)


def _check_curve(
    x: Any, y: Any, names: tuple[str, str], where: str
) -> tuple[np.ndarray, np.ndarray]:
    """Two equal-length 1-D float arrays with values in [0, 1], or a clear error."""
    a, b = np.asarray(x, dtype=float).ravel(), np.asarray(y, dtype=float).ravel()
    if a.size != b.size or a.size < 2:
        raise ValueError(
            f"{where}: {names[0]} and {names[1]} need the same length (>= 2), "
            f"got {a.size} and {b.size}"
        )
    for name, values in zip(names, (a, b), strict=True):
        if not np.all(np.isfinite(values)) or values.min() < 0 or values.max() > 1:
            raise ValueError(f"{where}: {name} must be finite and within [0, 1]")
    return a, b


def _check_probability_inputs(
    y_true: Any, p: Any, threshold: float, where: str
) -> tuple[np.ndarray, np.ndarray]:
    """``(targets, probabilities)`` as 0/1 ints and floats in [0, 1], or a clear error.

    ``y_true`` may hold 0/1 targets or the class names (NORMAL is 0, PNEUMONIA is 1).
    """
    truth = np.asarray(y_true).ravel()
    prob = np.asarray(p, dtype=float).ravel()
    if truth.size != prob.size or truth.size == 0:
        raise ValueError(
            f"{where}: y_true and p need the same, non-zero length: {truth.size} vs {prob.size}"
        )
    if truth.dtype.kind in "USO":
        _check_class_names(truth, where)
        truth = np.array([CLASSES.index(str(t)) for t in truth])
    if not set(np.unique(truth).tolist()) <= {0, 1}:
        raise ValueError(
            f"{where}: y_true must hold 0/1 targets, got {sorted(set(truth.tolist()))}"
        )
    if not np.all(np.isfinite(prob)) or prob.min() < 0 or prob.max() > 1:
        raise ValueError(f"{where}: p must be finite probabilities within [0, 1]")
    if not 0 <= threshold <= 1:
        raise ValueError(f"{where}: threshold must be within [0, 1], got {threshold}")
    return truth, prob


# --------------------------------------------------------------------------------------------
# Image panels (the image grid and the Grad-CAM grid)
# --------------------------------------------------------------------------------------------


def _as_displayable(image: np.ndarray, index: int, where: str) -> tuple[np.ndarray, float]:
    """Check one image and return it with the value that means white (255 or 1.0)."""
    array = np.asarray(image)
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] != 3):
        raise ValueError(
            f"{where}: image {index} has shape {array.shape}; expected (H, W) or (H, W, 3)"
        )
    if array.dtype == np.uint8:
        return array, 255.0
    if not np.issubdtype(array.dtype, np.floating):
        raise ValueError(f"{where}: image {index} has dtype {array.dtype}; expected uint8 or float")
    low, high = float(np.nanmin(array)), float(np.nanmax(array))
    if low < -1e-6 or high > 1 + 1e-6:
        raise ValueError(
            f"{where}: float image {index} has values in [{low:.3g}, {high:.3g}]; "
            "expected [0, 1] (undo the ImageNet normalisation before plotting)"
        )
    return np.clip(array, 0.0, 1.0), 1.0


def _title_color(title: str) -> str:
    """The class colour when a title names exactly one class, else black."""
    named = [cls for cls in CLASSES if cls in title.upper()]
    return CLASS_COLORS[named[0]] if len(named) == 1 else "black"


def _grid(n: int, ncols: int, panel: float, where: str) -> tuple[Figure, list[Axes]]:
    """A figure with ``n`` image panels laid out in ``ncols`` columns (unused cells removed)."""
    if n == 0:
        raise ValueError(f"{where}: no images to show")
    if ncols < 1:
        raise ValueError(f"{where}: ncols must be at least 1, got {ncols}")
    ncols = min(ncols, n)
    nrows = math.ceil(n / ncols)
    fig, axes = plt.subplots(
        nrows,
        ncols,
        figsize=(panel * ncols, panel * nrows + 0.5),
        squeeze=False,
        layout="constrained",
    )
    flat = list(axes.ravel())
    for ax in flat[n:]:
        fig.delaxes(ax)
    return fig, flat[:n]
