"""Regenerate the README's figures (``docs/figures/``) from data and a trained run.

``python -m helpers figures --eda-data DIR --samples-data DIR --run RUN`` draws, with the
same plotting functions the notebooks use: the class balance of the training split, the
image-size histograms, resized samples of both classes, the training history, and the
confusion matrix and ROC curve of the run's last evaluation (``metrics-<split>.json`` and
``predictions-<split>.csv`` written by ``python -m helpers evaluate``). Each figure is listed
in ``docs/figures/README.md`` with what produced it, so a caption never outruns the data.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import roc_curve

from helpers.config import CLASSES
from helpers.data import scan
from helpers.files import atomic_write_text
from helpers.images import load_gray
from helpers.plots import (
    plot_class_balance,
    plot_confusion_pair,
    plot_history,
    plot_image_grid,
    plot_roc,
    plot_size_histograms,
)
from helpers.runs import read_history


def _samples(images: pd.DataFrame, per_class: int, size: int, seed: int) -> tuple[list, list]:
    """``per_class`` resized images of each class, chosen with ``seed``."""
    pixels, titles = [], []
    for label in CLASSES:
        rows = images[images["label"] == label].sample(per_class, random_state=seed)
        for row in rows.itertuples():
            pixels.append(load_gray(row.path, size))
            titles.append(label)
    return pixels, titles


def make_figures(
    eda_data: str | Path,
    samples_data: str | Path,
    run_dir: str | Path,
    out: str | Path,
    split: str = "test",
    seed: int = 0,
) -> dict[str, str]:
    """Draw the six README figures into ``out`` and return ``{file name: provenance}``."""
    out, run_dir = Path(out), Path(run_dir)
    out.mkdir(parents=True, exist_ok=True)
    made: dict[str, str] = {}

    eda = scan(eda_data).images
    plot_class_balance(eda, split="train", save=out / "class_balance.png")
    made["class_balance.png"] = f"`scan` of {eda_data} (train split, {len(eda):,} images)"

    samples = scan(samples_data).images
    plot_size_histograms(samples, split="train", save=out / "size_histograms.png")
    made["size_histograms.png"] = (
        f"image headers of {samples_data} ({len(samples)} train images at original resolution)"
    )
    pixels, titles = _samples(samples, 5, 256, seed)
    plot_image_grid(pixels, titles, ncols=5, save=out / "resized_samples.png")
    made["resized_samples.png"] = f"5 NORMAL + 5 PNEUMONIA from {samples_data}, resized to 256x256"

    run_config = json.loads((run_dir / "config.json").read_text())
    history = read_history(run_dir)
    best = int(history.loc[history["val_loss"].idxmin(), "epoch"])
    plot_history(history, best_epoch=best, save=out / "training_history.png")
    recipe = run_config["config"]
    made["training_history.png"] = (
        f"run {run_dir.name}: weights {run_config['weights_used']}, "
        f"{recipe['image_size']}px, data {run_config['data']['root']}"
    )

    metrics = json.loads((run_dir / f"metrics-{split}.json").read_text())
    predictions = pd.read_csv(run_dir / f"predictions-{split}.csv")
    plot_confusion_pair(np.asarray(metrics["confusion_matrix"]), save=out / "confusion_matrix.png")
    y, p = predictions["target"].to_numpy(), predictions["p_pneumonia"].to_numpy()
    fpr, tpr, _ = roc_curve(y, p)
    at_half = (1 - metrics["specificity"], metrics["sensitivity"])  # (fpr, tpr) at 0.5
    plot_roc(fpr, tpr, metrics["roc_auc"], {"threshold 0.5": at_half}, save=out / "roc.png")
    where = f"{metrics['n_images']} images of {metrics['data_root']} ({split} split)"
    made["confusion_matrix.png"] = made["roc.png"] = f"run {run_dir.name} evaluated on {where}"

    lines = ["# Figures and what produced them", "", "| figure | produced from |", "| --- | --- |"]
    lines += [f"| `{name}` | {source} |" for name, source in made.items()]
    atomic_write_text(out / "README.md", "\n".join(lines) + "\n")
    return made
