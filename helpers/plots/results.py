"""The training and evaluation figures (notebooks 4 and 5): history, confusion matrix, ROC and
PR curves, predicted probabilities, Grad-CAM. Each draws values already computed by
``helpers.train``/``helpers.evaluate``, so a figure never disagrees with the metrics files.

The confusion matrix, ROC and PR curves are drawn by scikit-learn's display classes, then given
the series' colours and wording through the artists they return (``line_``, ``text_``) rather
than ``curve_kwargs``, which only scikit-learn 1.7 (ROC) and 1.9 (PR) accept.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from sklearn.metrics import ConfusionMatrixDisplay, PrecisionRecallDisplay, RocCurveDisplay

from helpers.config import CLASSES
from helpers.plots.style import (
    BEST_COLOR,
    CLASS_COLORS,
    LR_COLORS,
    REFERENCE_COLOR,
    TRAIN_COLOR,
    VAL_COLOR,
    PathLike,
    _as_displayable,
    _check_confusion,
    _check_curve,
    _check_probability_inputs,
    _grid,
    _require_columns,
    _saved,
    _styled,
    _title_color,
)

OPERATING_MARKERS = ("o", "s", "D", "^", "v", "P")
"""Marker shapes for the ROC operating points, in the order the points are given."""

REFERENCE_LINE: dict[str, Any] = {"color": REFERENCE_COLOR, "linewidth": 1.2}
"""The chance diagonal (ROC) and the no-skill line (PR): thin and grey."""

# --------------------------------------------------------------------------------------------
# Training (notebook 4)
# --------------------------------------------------------------------------------------------


def _mark_best_epoch(ax: Axes, best_epoch: int | None) -> None:
    """Draw the dashed vertical line at the best epoch, labelled in the panel's legend."""
    if best_epoch is None:
        return
    ax.axvline(
        best_epoch,
        color=BEST_COLOR,
        linestyle="--",
        linewidth=1.2,
        label=f"best epoch ({best_epoch})",
    )


def _draw_learning_rates(ax: Axes, history: pd.DataFrame, marker: str | None, where: str) -> None:
    """The learning rate of each parameter group per epoch, on a log scale.

    ``lr_backbone`` is drawn only when the history has values for it (it is absent or empty
    when the backbone is frozen or the network is trained from scratch with one group).
    """
    groups = [("lr_head", "head")]
    if "lr_backbone" in history.columns and history["lr_backbone"].notna().any():
        groups.append(("lr_backbone", "backbone"))
    for column, name in groups:
        values = pd.to_numeric(history[column], errors="coerce")
        if (values <= 0).any():
            raise ValueError(f"{where}: column {column} has non-positive learning rates")
        ax.plot(history["epoch"], values, color=LR_COLORS[column], marker=marker, ms=3, label=name)
    ax.set_yscale("log")
    ax.set_ylabel("learning rate (log scale)")
    ax.set_title("Learning rate per parameter group")


@_styled
def plot_history(
    history: pd.DataFrame, best_epoch: int | None = None, save: PathLike | None = None
) -> Figure:
    """Article Fig. 6: loss, weighted F1 and learning rate per epoch, with the best epoch marked.

    Three panels share the epoch axis: train/val loss, train/val F1, and the learning rate of
    each parameter group on a log scale (so the cosine warm restarts show as jumps, and the
    backbone's rate, orders of magnitude smaller, stays readable). The F1 is the one the history
    holds: ``train_f1``/``val_f1`` are the support-weighted F1 of all of an epoch's predictions
    (both classes, weighted by their counts), not the F1 of the PNEUMONIA class, so the panel
    says "weighted F1". A dashed vertical line marks ``best_epoch`` in every panel.
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
    panels = [("loss", "loss", "Loss"), ("f1", "weighted F1", "F1 score (weighted by support)")]
    for ax, (key, label, title) in zip(axes[:2], panels, strict=True):
        for split, color in (("train", TRAIN_COLOR), ("val", VAL_COLOR)):
            name = "validation" if split == "val" else split
            ax.plot(epochs, history[f"{split}_{key}"], color=color, marker=marker, ms=3, label=name)
        ax.set_ylabel(label)
        ax.set_title(title)
    axes[1].set_ylim(top=1.0)
    _draw_learning_rates(axes[2], history, marker, where)

    for ax in axes:
        _mark_best_epoch(ax, best_epoch)
        ax.set_xlabel("epoch")
        ax.legend(loc="best")
    if best_epoch is not None:
        row = history[history["epoch"] == best_epoch].iloc[0]
        fig.suptitle(
            f"Training history: best epoch {best_epoch} "
            f"(val loss {row['val_loss']:.3f}, val weighted F1 {row['val_f1']:.3f})"
        )
    else:
        fig.suptitle("Training history")
    return _saved(fig, save)


# --------------------------------------------------------------------------------------------
# Evaluation (notebook 5)
# --------------------------------------------------------------------------------------------


def _draw_confusion(ax: Axes, counts: np.ndarray, normalize: bool, title: str) -> None:
    """Draw one confusion matrix on ``ax`` with ``ConfusionMatrixDisplay``.

    Rows are the true class, columns the prediction. Counts mode shades and writes the counts;
    normalised mode shades the row percentages (the share of each true class given each
    prediction: recall on the diagonal) and writes each with its count underneath. A row with
    no images has no percentages (NaN in the display, left blank) and shows "n/a". Text colour
    follows the shade of its own cell, which stays readable when a row is NaN.
    """
    if normalize:
        totals = counts.sum(axis=1, keepdims=True)
        with np.errstate(invalid="ignore", divide="ignore"):
            values = np.where(totals > 0, 100 * counts / np.maximum(totals, 1), np.nan)
        vmax, values_format = 100.0, ".1f"
    else:
        values, vmax, values_format = counts, float(max(counts.max(), 1)), ",d"
    display = ConfusionMatrixDisplay(values, display_labels=list(CLASSES)).plot(
        ax=ax,
        cmap="Blues",
        colorbar=False,
        values_format=values_format,
        im_kw={"vmin": 0, "vmax": vmax},
        text_kw={"fontsize": 13},
    )
    shade = np.nan_to_num(values / vmax)
    for (i, j), text in np.ndenumerate(display.text_):
        if normalize:
            share = "n/a" if np.isnan(values[i, j]) else f"{text.get_text()}%"
            text.set_text(f"{share}\n({counts[i, j]:,})")
        text.set_color("white" if shade[i, j] > 0.55 else "black")
    ax.set_yticks([0, 1], list(CLASSES), rotation=90, va="center")
    for tick, cls in zip(ax.get_xticklabels() + ax.get_yticklabels(), CLASSES * 2, strict=True):
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


def _finish_curve(
    ax: Axes, curve: Any, label: str, names: tuple[str, str], title: str, top: float = 1.01
) -> None:
    """Restyle a display's ``curve`` in the PNEUMONIA colour, label it, name and square the axes.

    Both axes run from 0 to 1 with a small margin (recent displays set the same, older ones do
    not). The caller draws the legend afterwards, so it shows the new label.
    """
    curve.set(color=CLASS_COLORS["PNEUMONIA"], linewidth=2, label=label)
    ax.set(xlim=(-0.01, 1.01), ylim=(-0.01, top), aspect="equal", title=title)
    ax.set(xlabel=names[0], ylabel=names[1])


@_styled
def plot_roc(
    fpr: Any,
    tpr: Any,
    auc: float,
    operating_points: dict[str, tuple[float, float]] | None = None,
    save: PathLike | None = None,
) -> Figure:
    """The ROC curve with its AUROC, the chance diagonal and marked operating points.

    Drawn by ``RocCurveDisplay`` from the given points; the legend gives the AUROC to three
    decimals, as the metrics tables do (the display's own label rounds to two).
    ``operating_points`` maps a name (e.g. ``"threshold 0.5"``, ``"Youden (val)"``) to the
    ``(fpr, tpr)`` that threshold gives; each is drawn as a marker with its sensitivity and
    specificity in the legend, so the reader sees the trade-off a threshold chooses.
    """
    where = "plot_roc"
    fpr_a, tpr_a = _check_curve(fpr, tpr, ("fpr", "tpr"), where)
    points = dict(operating_points or {})
    for name, (x, y) in points.items():
        if not (0 <= x <= 1 and 0 <= y <= 1):
            raise ValueError(f"{where}: operating point {name!r} = ({x}, {y}) is outside [0, 1]")

    fig, ax = plt.subplots(figsize=(5.6, 5.2), layout="constrained")
    display = RocCurveDisplay(fpr=fpr_a, tpr=tpr_a, roc_auc=auc, pos_label="PNEUMONIA").plot(
        ax=ax,
        plot_chance_level=True,
        chance_level_kw={**REFERENCE_LINE, "linestyle": ":", "label": "chance (0.500)"},
    )
    names = ("false positive rate (1 - specificity)", "true positive rate (sensitivity)")
    title = "ROC curve (PNEUMONIA = positive)"
    _finish_curve(ax, display.line_, f"ROC (AUROC {auc:.3f})", names, title)
    for k, (name, (x, y)) in enumerate(points.items()):
        ax.plot(
            x,
            y,
            marker=OPERATING_MARKERS[k % len(OPERATING_MARKERS)],
            color=f"C{k % 10}",  # the colour cycle, named: the display's curve used up C0
            markersize=9,
            linestyle="none",
            markeredgecolor="black",
            label=f"{name}: sens. {y:.2f}, spec. {1 - x:.2f}",
        )
    ax.legend(loc="lower right")
    return _saved(fig, save)


@_styled
def plot_pr(
    recall: Any, precision: Any, ap: float, prevalence: float, save: PathLike | None = None
) -> Figure:
    """The precision-recall curve with its average precision and the prevalence baseline.

    A classifier that guesses has precision equal to the share of PNEUMONIA images (the
    prevalence), not 0.5: the dashed line shows where "no skill" lies on this test set.
    Drawn by ``PrecisionRecallDisplay`` in the order given, as steps, the way
    ``precision_recall_curve`` returns the points; the legend gives the AP to three decimals.
    """
    where = "plot_pr"
    recall_a, precision_a = _check_curve(recall, precision, ("recall", "precision"), where)
    if not 0 <= prevalence <= 1:
        raise ValueError(f"{where}: prevalence must be within [0, 1], got {prevalence}")
    no_skill = f"no skill (prevalence {prevalence:.3f})"
    fig, ax = plt.subplots(figsize=(5.6, 5.2), layout="constrained")
    display = PrecisionRecallDisplay(
        precision=precision_a,
        recall=recall_a,
        average_precision=ap,
        pos_label="PNEUMONIA",
        prevalence_pos_label=prevalence,
    ).plot(
        ax=ax,
        plot_chance_level=True,
        chance_level_kw={**REFERENCE_LINE, "linestyle": "--", "label": no_skill},
    )
    title = "Precision-recall curve (PNEUMONIA = positive)"
    names = ("recall (sensitivity)", "precision")
    _finish_curve(ax, display.line_, f"PR curve (AP {ap:.3f})", names, title, top=1.02)
    ax.legend(loc="lower left")
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
    truth, prob = _check_probability_inputs(y_true, p, threshold, "plot_probability_histogram")
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
