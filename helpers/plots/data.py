"""The dataset figures: class balance, split counts, pneumonia kinds, images per patient, image
sizes (notebooks 1 and 2), and the image grid (notebooks 2 and 5).

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
from matplotlib.ticker import MaxNLocator

from helpers.config import CLASSES
from helpers.plots.style import (
    CLASS_COLORS,
    KIND_COLORS,
    PathLike,
    _as_displayable,
    _check_class_names,
    _grid,
    _require_columns,
    _saved,
    _styled,
    _title_color,
)

SPLITS: tuple[str, str, str] = ("train", "val", "test")
"""The order in which splits are drawn; other split names follow, sorted."""


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
    _check_class_names(images["label"], where)
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
    _count_bars(ax, counts, [KIND_COLORS[k] for k in counts.index])
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
    _check_class_names(images["label"], where)
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
