"""Tests for helpers.plots: every figure draws from small synthetic inputs, shows what its
inputs say (bar heights, annotations, marker lines are read back from the artists), and saves
a small PNG atomically. The functions are imported from the package, as the notebooks do; one
test checks which module of the package (style, data, results) holds each."""

from __future__ import annotations

import os

os.environ["MPLBACKEND"] = "Agg"  # before pyplot is imported anywhere in this process

from pathlib import Path  # noqa: E402

import matplotlib  # noqa: E402

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from PIL import Image  # noqa: E402

from helpers import plots  # noqa: E402
from helpers.config import CLASSES  # noqa: E402
from helpers.plots import style  # noqa: E402

# Images per (split, label) in the synthetic scan table: unequal on purpose, so that a
# swapped class or split shows up.
COUNTS = {
    ("train", "NORMAL"): 7,
    ("train", "PNEUMONIA"): 19,
    ("val", "NORMAL"): 2,
    ("val", "PNEUMONIA"): 3,
    ("test", "NORMAL"): 4,
    ("test", "PNEUMONIA"): 6,
}


def make_scan_table(seed: int = 0) -> pd.DataFrame:
    """A scan table in the architecture's format with the counts of COUNTS."""
    rng = np.random.default_rng(seed)
    rows = []
    for (split, label), n in COUNTS.items():
        for i in range(n):
            kind = "none" if label == "NORMAL" else ("bacteria" if i % 3 else "virus")
            rows.append(
                {
                    "path": f"/data/{split}/{label}/{i}.jpeg",
                    "split": split,
                    "label": label,
                    "target": CLASSES.index(label),
                    "patient": f"{label[0]}{i // 2}",  # two images per patient, mostly
                    "kind": kind,
                    "width": int(rng.integers(900, 2000)),
                    "height": int(rng.integers(600, 1500)),
                    "mode": "L",
                    "bytes": 1000,
                }
            )
    return pd.DataFrame(rows)


def make_history(epochs: int = 12, backbone: bool = True) -> pd.DataFrame:
    """A training history with the columns train.py writes and a warm restart at epoch 6."""
    epoch = np.arange(1, epochs + 1)
    cycle = (epoch - 1) % 5
    lr_head = 1e-8 + (1e-2 - 1e-8) * (1 + np.cos(np.pi * cycle / 5)) / 2
    history = pd.DataFrame(
        {
            "epoch": epoch,
            "train_loss": 0.7 / epoch,
            "val_loss": 0.6 / epoch + 0.05,
            "train_acc": 0.8 + 0.01 * epoch,
            "val_acc": 0.78 + 0.01 * epoch,
            "train_f1": 0.8 + 0.01 * epoch,
            "val_f1": 0.79 + 0.01 * epoch,
            "lr_head": lr_head,
            "seconds": 3.0,
        }
    )
    if backbone:
        history["lr_backbone"] = lr_head * 1e-4
    return history


def gray_images(n: int, size: int = 32, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (size, size), dtype=np.uint8) for _ in range(n)]


def bar_heights(ax) -> list[float]:
    return [patch.get_height() for patch in ax.patches]


def vertical_lines_at(ax, x: float) -> list:
    """The Line2D artists of ``ax`` that are vertical lines at ``x``."""
    found = []
    for line in ax.get_lines():
        xs = np.asarray(line.get_xdata(), dtype=float)
        if xs.size == 2 and np.allclose(xs, x):
            found.append(line)
    return found


def cell_percentages(ax) -> np.ndarray:
    """The row percentages written in a normalised confusion matrix, as a 2x2 array."""
    return np.array([float(t.split("%")[0]) for t in cell_texts(ax)]).reshape(2, 2)


def cell_texts(ax) -> list[str]:
    """The annotation texts drawn in the cells of a confusion matrix (row by row)."""
    texts = [t for t in ax.texts]
    texts.sort(key=lambda t: (t.get_position()[1], t.get_position()[0]))
    return [t.get_text() for t in texts]


# ---------------------------------------------------------------------------------------------
# Package layout
# ---------------------------------------------------------------------------------------------


def test_public_names_are_reexported_from_their_modules():
    from helpers.plots import data, results, style

    homes = {
        style: ["figures_dir", "save_figure"],
        data: [
            "plot_class_balance",
            "plot_size_histograms",
            "plot_image_grid",
        ],
        results: [
            "plot_history",
            "plot_confusion_matrix",
            "plot_confusion_pair",
            "plot_roc",
            "plot_pr",
            "plot_probability_histogram",
            "plot_gradcam_grid",
        ],
    }
    for module, names in homes.items():
        for name in names:
            assert getattr(plots, name) is getattr(module, name), name
    exported = {name for names in homes.values() for name in names}
    assert {n for n in plots.__all__ if n.startswith("plot_")} == {
        n for n in exported if n.startswith("plot_")
    }


# ---------------------------------------------------------------------------------------------
# Data figures
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("split", ["train", "val", "test"])
def test_class_balance_bars_equal_counts(split):
    images = make_scan_table()
    fig = plots.plot_class_balance(images, split=split)
    assert isinstance(fig, Figure)
    (ax,) = fig.axes
    expected = [int(((images["split"] == split) & (images["label"] == c)).sum()) for c in CLASSES]
    assert bar_heights(ax) == expected
    assert [t.get_text() for t in ax.get_xticklabels()] == list(CLASSES)
    ratio = COUNTS[(split, "PNEUMONIA")] / COUNTS[(split, "NORMAL")]
    assert f"{ratio:.2f} : 1" in ax.get_title()


def test_class_balance_uses_fixed_class_colours():
    fig = plots.plot_class_balance(make_scan_table())
    colours = [matplotlib.colors.to_hex(p.get_facecolor()) for p in fig.axes[0].patches]
    assert colours == [plots.CLASS_COLORS[c].lower() for c in CLASSES]


def test_class_balance_rejects_bad_tables():
    images = make_scan_table()
    with pytest.raises(ValueError, match="label"):
        plots.plot_class_balance(images.drop(columns="label"))
    with pytest.raises(ValueError, match="holdout"):
        plots.plot_class_balance(images, split="holdout")
    bad = images.copy()
    bad.loc[0, "label"] = "COVID"
    with pytest.raises(ValueError, match="COVID"):
        plots.plot_class_balance(bad)


def test_size_histograms_three_panels_with_medians():
    images = make_scan_table()
    fig = plots.plot_size_histograms(images, split="train")
    assert len(fig.axes) == 3
    train = images[images["split"] == "train"]
    for ax, values in zip(
        fig.axes, [train["width"], train["height"], train["width"] / train["height"]], strict=True
    ):
        for cls in CLASSES:
            median = float(np.median(values[train["label"] == cls]))
            assert vertical_lines_at(ax, median), f"no median line at {median} in {ax.get_title()}"


def test_size_histograms_rejects_missing_sizes():
    images = make_scan_table()
    images.loc[0, "width"] = np.nan
    with pytest.raises(ValueError, match="width"):
        plots.plot_size_histograms(images)


# ---------------------------------------------------------------------------------------------
# Image grids
# ---------------------------------------------------------------------------------------------


def test_image_grid_one_axes_per_image():
    images = gray_images(6) + [np.random.default_rng(1).random((32, 32, 3))]
    titles = [f"NORMAL {i}" for i in range(3)] + [f"PNEUMONIA {i}" for i in range(4)]
    fig = plots.plot_image_grid(images, titles, ncols=5, suptitle="samples")
    assert len(fig.axes) == 7
    assert [ax.get_title() for ax in fig.axes] == titles
    assert fig.axes[0].title.get_color() == plots.CLASS_COLORS["NORMAL"]
    assert fig.axes[5].title.get_color() == plots.CLASS_COLORS["PNEUMONIA"]
    # uint8 images are shown on a fixed 0-255 scale (no per-image contrast stretch)
    assert fig.axes[0].images[0].get_clim() == (0, 255)


def test_image_grid_rejects_bad_images():
    open_before = plt.get_fignums()
    with pytest.raises(ValueError, match="titles"):
        plots.plot_image_grid(gray_images(2), ["a"])
    with pytest.raises(ValueError, match="image 1"):
        plots.plot_image_grid([np.zeros((8, 8)), np.zeros((8, 8, 4))], ["a", "b"])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        plots.plot_image_grid([np.full((8, 8), 2.5)], ["normalised"])
    assert plt.get_fignums() == open_before  # half-drawn figures are closed, not left open


def test_gradcam_grid_overlays_heatmaps():
    images = [im / 255.0 for im in gray_images(3)]
    heatmaps = [np.random.default_rng(i).random((7, 7)) for i in range(3)]  # lower resolution
    fig = plots.plot_gradcam_grid(images, heatmaps, ["a", "b", "c"], ncols=2)
    assert len(fig.axes) == 3 + 1  # one per image and the colour bar
    for ax in fig.axes[:3]:
        gray, heat = ax.images
        assert heat.get_alpha() == pytest.approx(0.4)
        assert heat.get_extent() == gray.get_extent()  # stretched over the whole X-ray
    with pytest.raises(ValueError, match="same number"):
        plots.plot_gradcam_grid(images, heatmaps[:2], ["a", "b", "c"])
    with pytest.raises(ValueError, match="outside"):
        plots.plot_gradcam_grid(images[:1], [heatmaps[0] * 3], ["a"])


# ---------------------------------------------------------------------------------------------
# Training history
# ---------------------------------------------------------------------------------------------


def test_history_marks_best_epoch_and_logs_lr():
    history = make_history()
    fig = plots.plot_history(history, best_epoch=8)
    assert len(fig.axes) == 3
    for ax in fig.axes:
        assert vertical_lines_at(ax, 8), f"no best-epoch line in {ax.get_title()}"
        assert not vertical_lines_at(ax, 7)
        assert vertical_lines_at(ax, 8)[0].get_linestyle() == "--"
    lr_ax = fig.axes[2]
    assert lr_ax.get_yscale() == "log"
    assert fig.axes[0].get_yscale() == "linear"
    lr_lines = [line for line in lr_ax.get_lines() if len(line.get_xdata()) == len(history)]
    assert len(lr_lines) == 2  # head and backbone
    plotted = np.asarray(lr_lines[0].get_ydata(), dtype=float)
    assert np.allclose(plotted, history["lr_head"])
    assert plotted[5] > plotted[4]  # the warm restart is in the data drawn


def test_history_f1_axis_says_weighted():
    # train_f1/val_f1 are support-weighted F1 (train.py), not the F1 of PNEUMONIA alone
    fig = plots.plot_history(make_history(), best_epoch=8)
    f1_ax = fig.axes[1]
    assert "weighted" in f1_ax.get_ylabel()
    assert "PNEUMONIA" not in f1_ax.get_ylabel()
    assert "weighted F1" in fig.get_suptitle()


def test_history_without_backbone_or_best_epoch():
    history = make_history(backbone=False)
    fig = plots.plot_history(history)
    lr_ax = fig.axes[2]
    assert len([line for line in lr_ax.get_lines() if len(line.get_xdata()) > 2]) == 1
    for ax in fig.axes:
        assert all(len(line.get_xdata()) == len(history) for line in ax.get_lines())
    with pytest.raises(ValueError, match="best_epoch 40"):
        plots.plot_history(history, best_epoch=40)
    with pytest.raises(ValueError, match="val_f1"):
        plots.plot_history(history.drop(columns="val_f1"))


# ---------------------------------------------------------------------------------------------
# Evaluation figures
# ---------------------------------------------------------------------------------------------

CM = np.array([[152, 82], [3, 387]])


def test_confusion_matrix_counts():
    fig = plots.plot_confusion_matrix(CM)
    (ax,) = fig.axes
    texts = cell_texts(ax)
    assert [int(t.replace(",", "")) for t in texts] == CM.ravel().tolist()
    assert ax.get_xlabel() == "predicted" and ax.get_ylabel() == "true"
    assert [t.get_text() for t in ax.get_xticklabels()] == list(CLASSES)


def test_confusion_matrix_row_percentages():
    fig = plots.plot_confusion_matrix(CM, normalize=True, title="test set")
    (ax,) = fig.axes
    assert ax.get_title() == "test set"
    texts = cell_texts(ax)
    percents = [float(t.split("%")[0]) for t in texts]
    expected = (100 * CM / CM.sum(axis=1, keepdims=True)).ravel()
    assert percents == pytest.approx(np.round(expected, 1).tolist())
    assert [int(t.split("(")[1].rstrip(")").replace(",", "")) for t in texts] == CM.ravel().tolist()


def test_confusion_matrix_empty_row_and_bad_input():
    fig = plots.plot_confusion_matrix([[0, 0], [5, 5]], normalize=True)
    assert cell_texts(fig.axes[0])[:2] == ["n/a\n(0)", "n/a\n(0)"]
    with pytest.raises(ValueError, match="2x2"):
        plots.plot_confusion_matrix(np.ones((3, 3)))
    with pytest.raises(ValueError, match="negative"):
        plots.plot_confusion_matrix([[1, -1], [0, 1]])


def test_confusion_pair_two_panels():
    fig = plots.plot_confusion_pair(CM)
    assert len(fig.axes) == 2
    assert "%" not in "".join(cell_texts(fig.axes[0]))
    assert all("%" in t for t in cell_texts(fig.axes[1]))


@pytest.mark.parametrize("cm", [CM, [[1, 2], [3, 4]], [[0, 7], [1, 0]], [[333, 1], [1, 2]]])
def test_confusion_pair_percentages_sum_to_100_per_row(cm):
    fig = plots.plot_confusion_pair(cm)
    counts_ax, percent_ax = fig.axes
    assert [int(t.replace(",", "")) for t in cell_texts(counts_ax)] == np.ravel(cm).tolist()
    percents = cell_percentages(percent_ax)
    assert percents.sum(axis=1) == pytest.approx([100.0, 100.0], abs=0.1)  # one decimal each
    # the rows are the true classes: each row is divided by its own total, not the column's
    expected = 100 * np.asarray(cm) / np.asarray(cm).sum(axis=1, keepdims=True)
    assert percents == pytest.approx(expected, abs=0.05)
    # and the shading is the row share as well (0 white, 100% darkest)
    image = percent_ax.images[0]
    assert np.allclose(image.norm(image.get_array()), expected / 100)


def test_roc_curve_auc_and_operating_points():
    fpr, tpr = [0, 0.1, 0.3, 1.0], [0, 0.7, 0.95, 1.0]
    points = {"threshold 0.5": (0.3, 0.95), "Youden (val)": (0.1, 0.7)}
    fig = plots.plot_roc(fpr, tpr, 0.912, operating_points=points)
    (ax,) = fig.axes
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert any("0.912" in t for t in legend)
    for name, (x, y) in points.items():
        (marker,) = [line for line in ax.get_lines() if line.get_label().startswith(name)]
        assert (marker.get_xdata()[0], marker.get_ydata()[0]) == (x, y)
    (curve,) = [line for line in ax.get_lines() if "0.912" in line.get_label()]
    assert np.allclose(curve.get_xdata(), fpr) and np.allclose(curve.get_ydata(), tpr)
    (chance,) = [line for line in ax.get_lines() if line.get_label().startswith("chance")]
    assert np.allclose(chance.get_xdata(), [0, 1]) and np.allclose(chance.get_ydata(), [0, 1])
    assert ax.get_xlabel().startswith("false positive rate")
    with pytest.raises(ValueError, match="same length"):
        plots.plot_roc([0, 1], [0, 0.5, 1], 0.5)


def test_pr_curve_with_prevalence_baseline():
    recall, precision = [1.0, 0.8, 0.5, 0.0], [0.62, 0.9, 0.97, 1.0]
    fig = plots.plot_pr(recall, precision, 0.93, prevalence=0.62)
    (ax,) = fig.axes
    baseline = [line for line in ax.get_lines() if "prevalence" in line.get_label()]
    assert len(baseline) == 1 and np.allclose(baseline[0].get_ydata(), 0.62)
    assert any("0.930" in line.get_label() for line in ax.get_lines())
    (curve,) = [line for line in ax.get_lines() if "0.930" in line.get_label()]
    assert curve.get_drawstyle() == "steps-post"  # as average precision is computed
    assert np.allclose(curve.get_xdata(), recall) and np.allclose(curve.get_ydata(), precision)
    with pytest.raises(ValueError, match="prevalence"):
        plots.plot_pr(recall, precision, 0.93, prevalence=1.5)


def test_probability_histogram_threshold_and_counts():
    y = np.array([0] * 10 + [1] * 20)
    p = np.r_[np.linspace(0.05, 0.75, 10), np.linspace(0.4, 0.99, 20)]
    fig = plots.plot_probability_histogram(y, p, threshold=0.6)
    (ax,) = fig.axes
    assert vertical_lines_at(ax, 0.6)
    assert sum(bar_heights(ax)) == len(y)
    legend = " ".join(t.get_text() for t in ax.get_legend().get_texts())
    called = int((p[:10] >= 0.6).sum())
    missed = int((p[10:] < 0.6).sum())
    assert f"{called:,} of 10 called PNEUMONIA" in legend
    assert f"{missed:,} of 20 missed" in legend
    # class names work as well as 0/1 targets
    names = np.array([CLASSES[t] for t in y])
    fig2 = plots.plot_probability_histogram(names, p, threshold=0.6)
    assert bar_heights(fig2.axes[0]) == bar_heights(ax)
    with pytest.raises(ValueError, match="same"):
        plots.plot_probability_histogram(y[:5], p, 0.5)
    with pytest.raises(ValueError, match="0/1"):
        plots.plot_probability_histogram(y + 1, p, 0.5)


# ---------------------------------------------------------------------------------------------
# Saving
# ---------------------------------------------------------------------------------------------


def all_figures(save_dir: Path) -> dict[str, Figure]:
    """Every public plot function, called with save= into ``save_dir``/<name>.png."""
    images = make_scan_table()
    grays = [im / 255.0 for im in gray_images(4, size=64)]
    heat = [np.random.default_rng(i).random((8, 8)) for i in range(4)]
    y = np.array([0] * 10 + [1] * 20)
    p = np.r_[np.linspace(0.05, 0.75, 10), np.linspace(0.4, 0.99, 20)]
    calls = {
        "class_balance": lambda s: plots.plot_class_balance(images, save=s),
        "sizes": lambda s: plots.plot_size_histograms(images, save=s),
        "grid": lambda s: plots.plot_image_grid(grays, list("abcd"), save=s),
        "gradcam": lambda s: plots.plot_gradcam_grid(grays, heat, list("abcd"), save=s),
        "history": lambda s: plots.plot_history(make_history(), best_epoch=4, save=s),
        "cm": lambda s: plots.plot_confusion_matrix(CM, save=s),
        "cm_pair": lambda s: plots.plot_confusion_pair(CM, save=s),
        "roc": lambda s: plots.plot_roc([0, 0.2, 1], [0, 0.9, 1], 0.9, save=s),
        "pr": lambda s: plots.plot_pr([1, 0.5, 0], [0.6, 0.9, 1], 0.9, 0.6, save=s),
        "prob": lambda s: plots.plot_probability_histogram(y, p, 0.5, save=s),
    }
    return {name: call(save_dir / f"{name}.png") for name, call in calls.items()}


@pytest.mark.slow  # every plot function drawn and saved, about 2 s
def test_every_function_saves_a_small_png(tmp_path):
    open_before = plt.get_fignums()
    out = tmp_path / "nested" / "figures"  # parent folders are created
    figures = all_figures(out)
    assert plt.get_fignums() == open_before  # nothing left open in pyplot
    files = sorted(out.iterdir())
    assert [f.name for f in files] == sorted(f"{name}.png" for name in figures)  # no temp files
    for f in files:
        size = f.stat().st_size
        assert 0 < size < plots.MAX_PNG_BYTES, f"{f.name}: {size} bytes"
        with Image.open(f) as image:
            assert image.format == "PNG"
            assert image.width > 100 and image.height > 100


def test_save_figure_shrinks_large_png(tmp_path):
    fig = Figure(figsize=(8, 6))
    fig.add_subplot().imshow(np.random.default_rng(0).random((600, 800, 3)))  # incompressible
    path = plots.save_figure(fig, tmp_path / "noise.png")
    assert 0 < path.stat().st_size <= plots.MAX_PNG_BYTES
    with Image.open(path) as image:
        assert image.format == "PNG"


def test_save_figure_is_atomic(tmp_path, monkeypatch):
    fig = plots.plot_confusion_matrix(CM)
    target = tmp_path / "cm.png"
    target.write_bytes(b"old figure")

    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(fig, "savefig", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        plots.save_figure(fig, target)
    assert target.read_bytes() == b"old figure"  # the old file is untouched
    assert [f.name for f in tmp_path.iterdir()] == ["cm.png"]  # and no temp file is left
    with pytest.raises(ValueError, match=r"\.png"):
        plots.save_figure(fig, tmp_path / "cm.jpg")


def test_a_figure_keeps_interactive_mode_switched_on_while_drawing():
    """Jupyter's inline backend switches interactive mode on when a kernel's first figure loads
    it; if that first figure is one of ours, leaving the house style must not switch it off,
    or every later pyplot or seaborn figure of the notebook would stay hidden."""

    @style._styled
    def first_figure() -> Figure:
        matplotlib.interactive(True)  # what loading the inline backend does
        return plt.figure()

    before = matplotlib.is_interactive()
    try:
        matplotlib.interactive(False)
        first_figure()
        assert matplotlib.is_interactive()
    finally:
        matplotlib.interactive(before)


def test_figures_dir_follows_outputs(tmp_path, monkeypatch):
    monkeypatch.setenv("PNEUMONIA_OUTPUTS", str(tmp_path / "out"))
    assert plots.figures_dir() == tmp_path / "out" / "figures"
