"""The dataset figures that are more than a seaborn one-liner: the class balance and the image
sizes with their medians (the README's figures, ``python -m helpers figures``), and the image
grid (notebooks 2, 5 and 6). Notebook 01 draws its own EDA with seaborn on the scan table.

Each function takes the scan table (``helpers.data.scan(...).images``: one row per image with
``split``, ``label``, ``patient``, ``kind``, ``width``, ``height``) or a list of images, checks
the columns it needs, and refuses labels other than NORMAL/PNEUMONIA rather than leaving rows
out of a count.
"""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from helpers.config import CLASSES
from helpers.plots.style import (
    CLASS_COLORS,
    PathLike,
    _as_displayable,
    _check_class_names,
    _grid,
    _require_columns,
    _saved,
    _styled,
    _title_color,
)


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


@_styled
def _count_bars(ax: Axes, counts: pd.Series, colors: list[str]) -> None:
    """One bar per entry of ``counts``, labelled with its count and its share of the total."""
    total = int(counts.sum())
    bars = ax.bar(list(counts.index), counts.to_numpy(), color=colors, width=0.6)
    ax.bar_label(bars, labels=[f"{n:,}\n({n / total:.0%})" for n in counts], padding=3)
    ax.set_ylim(0, counts.max() * 1.22)


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
    _check_class_names(rows["label"], where)
    counts = _class_counts(rows["label"])
    total = int(counts.sum())

    fig, ax = plt.subplots(figsize=(6, 4.5), layout="constrained")
    _count_bars(ax, counts, [CLASS_COLORS[c] for c in CLASSES])
    ax.set_ylabel("images")
    ax.set_xlabel("class")
    ax.grid(axis="x", visible=False)
    normal, pneumonia = int(counts["NORMAL"]), int(counts["PNEUMONIA"])
    ratio = f"{pneumonia / normal:.2f} : 1" if normal else "no NORMAL images"
    ax.set_title(f"Class balance, {split} split ({total:,} images)\nPNEUMONIA : NORMAL = {ratio}")
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
    _check_class_names(rows["label"], where)
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
