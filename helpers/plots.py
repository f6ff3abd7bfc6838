"""Every figure of the series, one function each.

Each ``plot_*`` function takes plain data (the scan table, arrays, dicts), draws one figure in
the series' house style and returns the :class:`matplotlib.figure.Figure`; with ``save=`` it
also writes a PNG (about 100 dpi, written to a temporary name and renamed, so a crash never
leaves half a file). Nothing here calls ``plt.show()``: a notebook displays the returned figure
when it is the last expression of a cell.

Why figures are created with ``plt.subplots`` and then closed before they are returned: creating
them through pyplot lets Jupyter's inline backend register its PNG display for figures, and
closing them removes them from pyplot's list of open figures, so a notebook shows each figure
exactly once (as the cell's value) and a loop drawing hundreds of figures does not leak memory.
A closed figure can still be displayed, drawn and saved.

The class colours are fixed for the whole series (:data:`CLASS_COLORS`), so NORMAL and PNEUMONIA
look the same in every figure. Styling is applied with ``matplotlib.rc_context`` around each
figure, so importing this module changes no global matplotlib setting.
"""

from __future__ import annotations

import functools
import math
import os
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from helpers.config import CLASSES, outputs_dir
from helpers.files import atomic_path

DPI = 100
"""Resolution of saved PNGs: enough for a slide, small enough for a git diff."""

MAX_PNG_BYTES = 300_000
"""Saved figures larger than this are re-encoded with a colour palette (see save_figure)."""

CLASS_COLORS: dict[str, str] = {"NORMAL": "#0072B2", "PNEUMONIA": "#D55E00"}
"""One colour per class (Okabe-Ito blue and vermillion: colour-blind safe), in every figure."""

KIND_COLORS: dict[str, str] = {"bacteria": "#A34500", "virus": "#F0A060", "other": "#999999"}
"""Shades of the PNEUMONIA colour for its two kinds (grey for rows of no known kind)."""

TRAIN_COLOR = "#4D4D4D"
VAL_COLOR = "#009E73"
LR_COLORS: dict[str, str] = {"lr_head": "#CC79A7", "lr_backbone": "#E69F00"}
BEST_COLOR = "#333333"

SPLITS: tuple[str, str, str] = ("train", "val", "test")

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


def _require_columns(frame: pd.DataFrame, columns: Sequence[str], where: str) -> None:
    """Raise a ValueError naming the function and the columns ``frame`` lacks."""
    if not isinstance(frame, pd.DataFrame):
        raise TypeError(f"{where}: expected a pandas DataFrame, got {type(frame).__name__}")
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(
            f"{where}: the table lacks column(s) {missing}; it has {list(frame.columns)}"
        )


def _check_labels(labels: pd.Series, where: str) -> None:
    """Refuse labels other than CLASSES, rather than silently leaving rows out of a count."""
    unknown = sorted(set(labels.astype(str)) - set(CLASSES))
    if unknown:
        raise ValueError(f"{where}: unknown label(s) {unknown}; expected {list(CLASSES)}")


def _rows_of_split(images: pd.DataFrame, split: str, where: str) -> pd.DataFrame:
    """The rows of one split, or a ValueError listing the splits that do exist."""
    rows = images[images["split"] == split]
    if rows.empty:
        present = sorted(images["split"].astype(str).unique())
        raise ValueError(f"{where}: no images in split {split!r}; splits present: {present}")
    return rows


def _class_counts(labels: pd.Series) -> pd.Series:
    """Counts per class in CLASSES order (zeros included)."""
    return labels.value_counts().reindex(list(CLASSES), fill_value=0).astype(int)


def _mark_best_epoch(ax: Axes, best_epoch: int | None, label: bool) -> None:
    """Draw the dashed vertical line at the best epoch (labelled once, in the first panel)."""
    if best_epoch is None:
        return
    ax.axvline(
        best_epoch,
        color=BEST_COLOR,
        linestyle="--",
        linewidth=1.2,
        label=f"best epoch ({best_epoch})" if label else None,
    )


# --------------------------------------------------------------------------------------------
# The data (notebook 1)
# --------------------------------------------------------------------------------------------


@_styled
def plot_class_balance(
    images: pd.DataFrame, split: str = "train", save: PathLike | None = None
) -> Figure:
    """Article Fig. 2: how many NORMAL and PNEUMONIA images one split holds.

    The counts are written on the bars and the PNEUMONIA:NORMAL ratio is in the title, because
    that imbalance (about 3:1 in the official train split) is why the series uses class weights
    and reports F1 rather than accuracy.
    """
    where = "plot_class_balance"
    _require_columns(images, ["split", "label"], where)
    rows = _rows_of_split(images, split, where)
    _check_labels(rows["label"], where)
    counts = _class_counts(rows["label"])
    total = int(counts.sum())

    fig, ax = plt.subplots(figsize=(6, 4.5), layout="constrained")
    bars = ax.bar(
        list(CLASSES),
        counts.to_numpy(),
        color=[CLASS_COLORS[c] for c in CLASSES],
        width=0.6,
    )
    ax.bar_label(bars, labels=[f"{n:,}\n({n / total:.0%})" for n in counts], padding=3)
    ax.set_ylim(0, counts.max() * 1.22)
    ax.set_ylabel("images")
    ax.set_xlabel("class")
    ax.grid(axis="x", visible=False)
    normal, pneumonia = int(counts["NORMAL"]), int(counts["PNEUMONIA"])
    ratio = f"{pneumonia / normal:.2f} : 1" if normal else "no NORMAL images"
    ax.set_title(f"Class balance, {split} split ({total:,} images)\nPNEUMONIA : NORMAL = {ratio}")
    return _saved(fig, save)


@_styled
def plot_split_counts(images: pd.DataFrame, save: PathLike | None = None) -> Figure:
    """Images per split and class, as grouped bars (one group per split, one bar per class).

    Shows at a glance how small the official validation folder is and that every split keeps
    roughly the same imbalance. Splits appear in train/val/test order; an absent split is left
    out rather than drawn as an empty group.
    """
    where = "plot_split_counts"
    _require_columns(images, ["split", "label"], where)
    if images.empty:
        raise ValueError(f"{where}: the scan table is empty")
    _check_labels(images["label"], where)
    present = [str(s) for s in images["split"].unique()]
    splits = [s for s in SPLITS if s in present] + sorted(s for s in present if s not in SPLITS)
    table = (
        images.groupby(["split", "label"])
        .size()
        .unstack(fill_value=0)
        .reindex(index=splits, columns=list(CLASSES), fill_value=0)
    )

    fig, ax = plt.subplots(figsize=(7, 4.5), layout="constrained")
    x = np.arange(len(splits))
    width = 0.38
    for i, cls in enumerate(CLASSES):
        bars = ax.bar(
            x + (i - 0.5) * width,
            table[cls].to_numpy(),
            width=width,
            color=CLASS_COLORS[cls],
            label=cls,
        )
        ax.bar_label(bars, labels=[f"{n:,}" for n in table[cls]], padding=2, fontsize=9)
    ax.set_xticks(x, [f"{s}\n({table.loc[s].sum():,})" for s in splits])
    ax.set_ylim(0, table.to_numpy().max() * 1.15)
    ax.set_xlabel("split (total images)")
    ax.set_ylabel("images")
    ax.grid(axis="x", visible=False)
    ax.legend(title="class")
    ax.set_title("Images per split and class")
    return _saved(fig, save)


@_styled
def plot_pneumonia_kinds(images: pd.DataFrame, save: PathLike | None = None) -> Figure:
    """Bacterial vs viral pneumonia among the PNEUMONIA images (all splits together).

    The series only separates NORMAL from PNEUMONIA, but the two kinds look different on an
    X-ray and explain part of the errors. PNEUMONIA rows whose kind is neither ``bacteria`` nor
    ``virus`` are counted in an "other" bar, so no image disappears from the figure.
    """
    where = "plot_pneumonia_kinds"
    _require_columns(images, ["label", "kind"], where)
    rows = images[images["label"] == "PNEUMONIA"]
    if rows.empty:
        raise ValueError(f"{where}: the table has no PNEUMONIA rows")
    kinds = rows["kind"].astype(str).where(rows["kind"].isin(["bacteria", "virus"]), "other")
    counts = kinds.value_counts().reindex(["bacteria", "virus", "other"], fill_value=0)
    if counts["other"] == 0:
        counts = counts.drop("other")
    total = int(counts.sum())

    fig, ax = plt.subplots(figsize=(6, 4.5), layout="constrained")
    bars = ax.bar(
        list(counts.index),
        counts.to_numpy(),
        color=[KIND_COLORS[k] for k in counts.index],
        width=0.6,
    )
    ax.bar_label(bars, labels=[f"{n:,}\n({n / total:.0%})" for n in counts], padding=3)
    ax.set_ylim(0, counts.max() * 1.22)
    ax.set_xlabel("kind of pneumonia (from the file name)")
    ax.set_ylabel("PNEUMONIA images")
    ax.grid(axis="x", visible=False)
    ax.set_title(f"Bacterial vs viral pneumonia ({total:,} images)")
    return _saved(fig, save)


@_styled
def plot_images_per_patient(images: pd.DataFrame, save: PathLike | None = None) -> Figure:
    """How many images each patient contributes, per class (side-by-side histogram bars).

    Several images per patient is why the validation split is grouped by patient: otherwise
    the same lungs would sit on both sides of the split and flatter the validation score.
    """
    where = "plot_images_per_patient"
    _require_columns(images, ["label", "patient"], where)
    if images.empty:
        raise ValueError(f"{where}: the scan table is empty")
    _check_labels(images["label"], where)
    per_patient = images.groupby(["label", "patient"]).size()
    data = [per_patient.get(cls, pd.Series(dtype=int)).to_numpy() for cls in CLASSES]
    top = max(int(d.max()) for d in data if d.size)
    bins = np.arange(0.5, top + 1.5)

    fig, ax = plt.subplots(figsize=(8, 4.5), layout="constrained")
    labels = [
        f"{cls}: {d.size:,} patients, {d.mean():.2f} images each" if d.size else f"{cls}: none"
        for cls, d in zip(CLASSES, data, strict=True)
    ]
    ax.hist(data, bins=bins, color=[CLASS_COLORS[c] for c in CLASSES], label=labels, rwidth=0.9)
    ax.set_yscale("log")
    ax.set_ylim(bottom=0.5)  # so that a bar of one patient still shows on the log scale
    ax.set_xlim(0, top + 1)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("images per patient")
    ax.set_ylabel("patients (log scale)")
    ax.legend()
    ax.set_title("Images per patient")
    return _saved(fig, save)


@_styled
def plot_size_histograms(
    images: pd.DataFrame, split: str = "train", save: PathLike | None = None
) -> Figure:
    """Article Fig. 3: width, height and aspect ratio of the original images, per class.

    Three panels with overlaid histograms and each class's median as a dashed line. They show
    why every image is resized to one square size, and that the two classes differ in size
    (a shortcut a network could learn if images were not resized).
    """
    where = "plot_size_histograms"
    _require_columns(images, ["split", "label", "width", "height"], where)
    rows = _rows_of_split(images, split, where)
    _check_labels(rows["label"], where)
    width = pd.to_numeric(rows["width"], errors="coerce")
    height = pd.to_numeric(rows["height"], errors="coerce")
    bad = int((~(width > 0) | ~(height > 0)).sum())
    if bad:
        raise ValueError(f"{where}: {bad} row(s) of split {split!r} lack a positive width/height")
    values = {
        "width (px)": width,
        "height (px)": height,
        "aspect ratio (width / height)": width / height,
    }

    fig, axes = plt.subplots(1, 3, figsize=(14, 4.2), layout="constrained")
    for ax, (name, column) in zip(axes, values.items(), strict=True):
        bins = np.histogram_bin_edges(column.to_numpy(dtype=float), bins=30)
        for cls in CLASSES:
            data = column[rows["label"] == cls].to_numpy(dtype=float)
            if data.size == 0:
                continue
            median = float(np.median(data))
            text = f"{median:.2f}" if name.startswith("aspect") else f"{median:,.0f}"
            ax.hist(data, bins=bins, color=CLASS_COLORS[cls], alpha=0.55, label=cls)
            ax.axvline(
                median,
                color=CLASS_COLORS[cls],
                linestyle="--",
                linewidth=1.6,
                label=f"median {cls}: {text}",
            )
        ax.set_xlabel(name)
        ax.set_ylabel("images")
        ax.legend(frameon=True, framealpha=0.9, edgecolor="none")
    axes[0].set_title("Width")
    axes[1].set_title("Height")
    axes[2].set_title("Aspect ratio")
    fig.suptitle(f"Original image sizes, {split} split ({len(rows):,} images)")
    return _saved(fig, save)


# --------------------------------------------------------------------------------------------
# Images (notebooks 1, 2 and 5)
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


@_styled
def plot_image_grid(
    images: Sequence[np.ndarray],
    titles: Sequence[str],
    ncols: int = 5,
    save: PathLike | None = None,
    suptitle: str | None = None,
) -> Figure:
    """Article Fig. 4 (and the augmentation grid): images in a grid, one title each.

    Accepts grayscale ``(H, W)`` or RGB ``(H, W, 3)`` arrays, uint8 (0-255) or float in [0, 1];
    grayscale is shown with a fixed black-to-white scale so that brightness is comparable from
    panel to panel (no per-image contrast stretch). A title naming one class is drawn in that
    class's colour. One axes per image.
    """
    where = "plot_image_grid"
    if len(images) != len(titles):
        raise ValueError(f"{where}: {len(images)} images but {len(titles)} titles")
    fig, axes = _grid(len(images), ncols, 2.4, where)
    for index, (ax, image, title) in enumerate(zip(axes, images, titles, strict=True)):
        array, white = _as_displayable(image, index, where)
        ax.imshow(array, cmap="gray", vmin=0, vmax=white, interpolation="antialiased")
        ax.set_title(str(title), fontsize=10, color=_title_color(str(title)))
        ax.set_axis_off()
    if suptitle:
        fig.suptitle(suptitle)
    return _saved(fig, save)


@_styled
def plot_gradcam_grid(
    images: Sequence[np.ndarray],
    heatmaps: Sequence[np.ndarray],
    titles: Sequence[str],
    ncols: int = 4,
    save: PathLike | None = None,
) -> Figure:
    """Each X-ray with its Grad-CAM heatmap overlaid (jet, alpha 0.4), plus one colour bar.

    Images are grayscale ``(H, W)`` in [0, 1] (uint8 also accepted); heatmaps are ``(H', W')``
    in [0, 1] and are stretched over their image when their resolution is lower (Grad-CAM maps
    come from the last convolutional layer). The figure has one axes per image and a last
    axes for the shared colour bar.
    """
    where = "plot_gradcam_grid"
    if not len(images) == len(heatmaps) == len(titles):
        raise ValueError(
            f"{where}: {len(images)} images, {len(heatmaps)} heatmaps and {len(titles)} titles; "
            "expected the same number of each"
        )
    fig, axes = _grid(len(images), ncols, 3.0, where)
    overlay = None
    for index, (ax, image, heatmap, title) in enumerate(
        zip(axes, images, heatmaps, titles, strict=True)
    ):
        array, white = _as_displayable(image, index, where)
        heat = np.asarray(heatmap, dtype=float)
        if heat.ndim != 2:
            raise ValueError(f"{where}: heatmap {index} has shape {heat.shape}; expected (H, W)")
        if np.nanmin(heat) < -1e-6 or np.nanmax(heat) > 1 + 1e-6:
            raise ValueError(f"{where}: heatmap {index} has values outside [0, 1]")
        height, width = array.shape[:2]
        extent = (-0.5, width - 0.5, height - 0.5, -0.5)
        ax.imshow(array, cmap="gray", vmin=0, vmax=white, extent=extent)
        overlay = ax.imshow(
            heat, cmap="jet", alpha=0.4, vmin=0, vmax=1, extent=extent, interpolation="bilinear"
        )
        ax.set_title(str(title), fontsize=10, color=_title_color(str(title)))
        ax.set_axis_off()
    fig.colorbar(overlay, ax=axes, shrink=0.8, label="Grad-CAM importance")
    return _saved(fig, save)


# --------------------------------------------------------------------------------------------
# Training (notebook 3)
# --------------------------------------------------------------------------------------------


@_styled
def plot_history(
    history: pd.DataFrame, best_epoch: int | None = None, save: PathLike | None = None
) -> Figure:
    """Article Fig. 6: loss, F1 and learning rate per epoch, with the best epoch marked.

    Three panels share the epoch axis: train/val loss, train/val F1, and the learning rate of
    each parameter group on a log scale (so the cosine warm restarts show as jumps, and the
    backbone's rate, orders of magnitude smaller, stays readable). ``lr_backbone`` is optional
    (absent or empty when the backbone is frozen or trained from scratch with one group). A
    dashed vertical line marks ``best_epoch`` in every panel.
    """
    where = "plot_history"
    required = ["epoch", "train_loss", "val_loss", "train_f1", "val_f1", "lr_head"]
    _require_columns(history, required, where)
    if history.empty:
        raise ValueError(f"{where}: the history has no rows")
    epochs = history["epoch"].to_numpy()
    if best_epoch is not None and best_epoch not in set(epochs.tolist()):
        raise ValueError(
            f"{where}: best_epoch {best_epoch} is not an epoch of the history "
            f"({int(epochs.min())}..{int(epochs.max())})"
        )

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2), sharex=True, layout="constrained")
    marker = "o" if len(history) <= 40 else None
    panels = [("loss", "loss", axes[0]), ("f1", "F1 (PNEUMONIA)", axes[1])]
    for key, label, ax in panels:
        ax.plot(
            epochs, history[f"train_{key}"], color=TRAIN_COLOR, marker=marker, ms=3, label="train"
        )
        ax.plot(
            epochs, history[f"val_{key}"], color=VAL_COLOR, marker=marker, ms=3, label="validation"
        )
        ax.set_ylabel(label)
        ax.set_title("Loss" if key == "loss" else "F1 score")
    axes[1].set_ylim(top=1.0)

    lr_ax = axes[2]
    groups = [("lr_head", "head")]
    if "lr_backbone" in history.columns and history["lr_backbone"].notna().any():
        groups.append(("lr_backbone", "backbone"))
    for column, name in groups:
        values = pd.to_numeric(history[column], errors="coerce")
        if (values <= 0).any():
            raise ValueError(f"{where}: column {column} has non-positive learning rates")
        lr_ax.plot(epochs, values, color=LR_COLORS[column], marker=marker, ms=3, label=name)
    lr_ax.set_yscale("log")
    lr_ax.set_ylabel("learning rate (log scale)")
    lr_ax.set_title("Learning rate per parameter group")

    for ax in axes:
        _mark_best_epoch(ax, best_epoch, label=True)
        ax.set_xlabel("epoch")
        ax.legend(loc="best")
    if best_epoch is not None:
        row = history[history["epoch"] == best_epoch].iloc[0]
        fig.suptitle(
            f"Training history: best epoch {best_epoch} "
            f"(val loss {row['val_loss']:.3f}, val F1 {row['val_f1']:.3f})"
        )
    else:
        fig.suptitle("Training history")
    return _saved(fig, save)


# --------------------------------------------------------------------------------------------
# Evaluation (notebook 4)
# --------------------------------------------------------------------------------------------


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


def _draw_confusion(ax: Axes, counts: np.ndarray, normalize: bool, title: str) -> None:
    """Draw one confusion matrix on ``ax`` (rows = true class, columns = predicted class).

    Counts mode writes the count in each cell; normalised mode writes the row percentage
    (the share of each true class given each prediction: recall on the diagonal) with the
    count underneath. A row with no images shows "n/a".
    """
    totals = counts.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        shares = np.where(totals > 0, counts / np.maximum(totals, 1), np.nan)
    shade = np.nan_to_num(shares) if normalize else counts / max(counts.max(), 1)
    ax.imshow(shade, cmap="Blues", vmin=0, vmax=1)
    for i in range(2):
        for j in range(2):
            if normalize:
                text = "n/a" if np.isnan(shares[i, j]) else f"{100 * shares[i, j]:.1f}%"
                text += f"\n({counts[i, j]:,})"
            else:
                text = f"{counts[i, j]:,}"
            color = "white" if shade[i, j] > 0.55 else "black"
            ax.text(j, i, text, ha="center", va="center", color=color, fontsize=13)
    ax.set_xticks([0, 1], list(CLASSES))
    ax.set_yticks([0, 1], list(CLASSES), rotation=90, va="center")
    for tick, cls in zip(ax.get_yticklabels(), CLASSES, strict=True):
        tick.set_color(CLASS_COLORS[cls])
    for tick, cls in zip(ax.get_xticklabels(), CLASSES, strict=True):
        tick.set_color(CLASS_COLORS[cls])
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.grid(False)
    for spine in ax.spines.values():
        spine.set_visible(False)
    ax.set_title(title)


@_styled
def plot_confusion_matrix(
    cm: Any, normalize: bool = False, save: PathLike | None = None, title: str | None = None
) -> Figure:
    """Article Fig. 7: the 2x2 confusion matrix, as counts or as row percentages.

    Rows are the true class and columns the prediction, both in CLASSES order (NORMAL, then
    PNEUMONIA), as ``sklearn.metrics.confusion_matrix(y_true, y_pred)`` returns it.
    """
    counts = _check_confusion(cm, "plot_confusion_matrix")
    fig, ax = plt.subplots(figsize=(5, 4.6), layout="constrained")
    default = "Confusion matrix (% of each true class)" if normalize else "Confusion matrix"
    _draw_confusion(ax, counts, normalize, title or default)
    return _saved(fig, save)


@_styled
def plot_confusion_pair(cm: Any, save: PathLike | None = None) -> Figure:
    """The confusion matrix twice, side by side: counts, and row percentages."""
    counts = _check_confusion(cm, "plot_confusion_pair")
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.6), layout="constrained")
    _draw_confusion(axes[0], counts, False, "Counts")
    _draw_confusion(axes[1], counts, True, "% of each true class")
    fig.suptitle(f"Confusion matrix ({counts.sum():,} images)")
    return _saved(fig, save)


def _curve(x: Any, y: Any, names: tuple[str, str], where: str) -> tuple[np.ndarray, np.ndarray]:
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


OPERATING_MARKERS = ("o", "s", "D", "^", "v", "P")


@_styled
def plot_roc(
    fpr: Any,
    tpr: Any,
    auc: float,
    operating_points: dict[str, tuple[float, float]] | None = None,
    save: PathLike | None = None,
) -> Figure:
    """The ROC curve with its AUROC, the chance diagonal and marked operating points.

    ``operating_points`` maps a name (e.g. ``"threshold 0.5"``, ``"Youden (val)"``) to the
    ``(fpr, tpr)`` that threshold gives; each is drawn as a marker with its sensitivity and
    specificity in the legend, so the reader sees the trade-off a threshold chooses.
    """
    where = "plot_roc"
    fpr_a, tpr_a = _curve(fpr, tpr, ("fpr", "tpr"), where)
    fig, ax = plt.subplots(figsize=(5.6, 5.2), layout="constrained")
    ax.plot(
        fpr_a, tpr_a, color=CLASS_COLORS["PNEUMONIA"], linewidth=2, label=f"ROC (AUROC {auc:.3f})"
    )
    ax.plot([0, 1], [0, 1], color="#888888", linestyle=":", linewidth=1.2, label="chance (0.500)")
    for k, (name, (x, y)) in enumerate((operating_points or {}).items()):
        marker = OPERATING_MARKERS[k % len(OPERATING_MARKERS)]
        if not (0 <= x <= 1 and 0 <= y <= 1):
            raise ValueError(f"{where}: operating point {name!r} = ({x}, {y}) is outside [0, 1]")
        ax.plot(
            x,
            y,
            marker=marker,
            markersize=9,
            linestyle="none",
            markeredgecolor="black",
            label=f"{name}: sens. {y:.2f}, spec. {1 - x:.2f}",
        )
    ax.set_xlim(-0.01, 1.01)
    ax.set_ylim(-0.01, 1.01)
    ax.set_aspect("equal")
    ax.set_xlabel("false positive rate (1 - specificity)")
    ax.set_ylabel("true positive rate (sensitivity)")
    ax.legend(loc="lower right")
    ax.set_title("ROC curve (PNEUMONIA = positive)")
    return _saved(fig, save)


@_styled
def plot_pr(
    recall: Any, precision: Any, ap: float, prevalence: float, save: PathLike | None = None
) -> Figure:
    """The precision-recall curve with its average precision and the prevalence baseline.

    A classifier that guesses has precision equal to the share of PNEUMONIA images (the
    prevalence), not 0.5: the dashed line shows where "no skill" lies on this test set.
    Points are drawn in the order given, as steps, the way ``precision_recall_curve`` returns
    them and ``sklearn.metrics.PrecisionRecallDisplay`` draws them.
    """
    where = "plot_pr"
    recall_a, precision_a = _curve(recall, precision, ("recall", "precision"), where)
    if not 0 <= prevalence <= 1:
        raise ValueError(f"{where}: prevalence must be within [0, 1], got {prevalence}")
    fig, ax = plt.subplots(figsize=(5.6, 5.2), layout="constrained")
    ax.plot(
        recall_a,
        precision_a,
        drawstyle="steps-post",
        color=CLASS_COLORS["PNEUMONIA"],
        linewidth=2,
        label=f"PR curve (AP {ap:.3f})",
    )
    ax.axhline(
        prevalence,
        color="#888888",
        linestyle="--",
        linewidth=1.2,
        label=f"no skill (prevalence {prevalence:.3f})",
    )
    ax.set_xlim(-0.01, 1.01)
    ax.set_ylim(-0.01, 1.02)
    ax.set_aspect("equal")
    ax.set_xlabel("recall (sensitivity)")
    ax.set_ylabel("precision")
    ax.legend(loc="lower left")
    ax.set_title("Precision-recall curve (PNEUMONIA = positive)")
    return _saved(fig, save)


@_styled
def plot_probability_histogram(
    y_true: Any, p: Any, threshold: float, save: PathLike | None = None
) -> Figure:
    """The distribution of P(pneumonia) for each true class, with the decision threshold.

    NORMAL images to the right of the line are false alarms; the figure shows how a model
    trained on a 3:1 imbalance over-calls pneumonia, and where a different threshold would cut.
    ``y_true`` holds 0/1 targets (or the class names); ``p`` the probabilities.
    """
    where = "plot_probability_histogram"
    truth = np.asarray(y_true).ravel()
    prob = np.asarray(p, dtype=float).ravel()
    if truth.size != prob.size or truth.size == 0:
        raise ValueError(
            f"{where}: y_true and p need the same, non-zero length: {truth.size} vs {prob.size}"
        )
    if truth.dtype.kind in "USO":
        lookup = {cls: i for i, cls in enumerate(CLASSES)}
        unknown = sorted(set(truth.astype(str)) - set(lookup))
        if unknown:
            raise ValueError(f"{where}: unknown label(s) {unknown}; expected {list(CLASSES)}")
        truth = np.array([lookup[str(t)] for t in truth])
    if not set(np.unique(truth).tolist()) <= {0, 1}:
        raise ValueError(
            f"{where}: y_true must hold 0/1 targets, got {sorted(set(truth.tolist()))}"
        )
    if not np.all(np.isfinite(prob)) or prob.min() < 0 or prob.max() > 1:
        raise ValueError(f"{where}: p must be finite probabilities within [0, 1]")
    if not 0 <= threshold <= 1:
        raise ValueError(f"{where}: threshold must be within [0, 1], got {threshold}")

    fig, ax = plt.subplots(figsize=(8, 4.5), layout="constrained")
    bins = np.linspace(0, 1, 26)
    for target, cls in enumerate(CLASSES):
        values = prob[truth == target]
        if values.size == 0:
            continue
        called = int((values >= threshold).sum())
        if cls == "NORMAL":
            note = f"{called:,} of {values.size:,} called PNEUMONIA ({called / values.size:.0%})"
        else:
            missed = values.size - called
            note = f"{missed:,} of {values.size:,} missed ({missed / values.size:.0%})"
        ax.hist(values, bins=bins, color=CLASS_COLORS[cls], alpha=0.6, label=f"true {cls}: {note}")
    ax.axvline(
        threshold,
        color=BEST_COLOR,
        linestyle="--",
        linewidth=1.5,
        label=f"threshold {threshold:.2f}",
    )
    ax.set_yscale("log")
    ax.set_ylim(bottom=0.5)  # a bin of one image still shows on the log scale
    ax.set_xlim(0, 1)
    ax.set_xlabel("P(pneumonia)")
    ax.set_ylabel("images (log scale)")
    ax.legend(loc="upper left", frameon=True, framealpha=0.9, edgecolor="none")
    ax.set_title("Predicted probability of pneumonia, per true class")
    return _saved(fig, save)
