"""Reports: the README's figures (``docs/figures/``) and the text report of an evaluation.

``python -m helpers figures --eda-data DIR --samples-data DIR --run RUN`` draws, with the
same plotting functions the notebooks use: the class balance of the training split, the
image-size histograms, resized samples of both classes, the training history, and, from the
run's last evaluation (``metrics-<split>.json`` and ``predictions-<split>.csv`` written by
``python -m helpers evaluate``), the article's Table 2 (``table2.md``), its Fig. 7 (the
confusion matrix in counts and row-normalised) and the ROC and precision-recall curves. Each
file is listed in ``docs/figures/README.md`` with what produced it, so a caption never outruns
the data. :func:`format_metrics` is what ``python -m helpers evaluate`` prints.
"""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import classification_report, precision_recall_curve, roc_curve

from helpers.config import CLASSES
from helpers.data import scan
from helpers.files import atomic_write_text
from helpers.images import load_gray
from helpers.plots import (
    plot_class_balance,
    plot_confusion_pair,
    plot_history,
    plot_image_grid,
    plot_pr,
    plot_roc,
    plot_size_histograms,
)
from helpers.results import recorded_recipe, train_command
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
    n_train = int((eda["split"] == "train").sum())
    made["class_balance.png"] = f"`scan` of {eda_data} (train split, {n_train:,} images)"

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
    precision, recall, _ = precision_recall_curve(y, p)
    plot_pr(recall, precision, metrics["average_precision"], float(y.mean()), save=out / "pr.png")
    report = classification_report(y, (p >= 0.5).astype(int), target_names=list(CLASSES), digits=3)
    atomic_write_text(out / "table2.md", f"```\n{report}```\n")
    where = f"{metrics['n_images']} images of {metrics['data_root']} ({split} split)"
    for name in ("table2.md", "confusion_matrix.png", "roc.png", "pr.png"):
        made[name] = f"run {run_dir.name} evaluated on {where}"

    command = (
        f"python -m helpers figures --eda-data {eda_data} --samples-data {samples_data} "
        f"--run {run_dir} --split {split} --out {out}"
    )
    trained = train_command(recorded_recipe(run_config), run_dir.name, str(eda_data))
    lines = [
        "# Figures and what produced them",
        "",
        f"Made by `{command}`; the run was trained by `{trained}` and evaluated by "
        f"`python -m helpers evaluate --run {run_dir}`.",
        "",
        "| figure | produced from |",
        "| --- | --- |",
    ]
    lines += [f"| `{name}` | {source} |" for name, source in made.items()]
    atomic_write_text(out / "README.md", "\n".join(lines) + "\n")
    return made


# --- the text report of an evaluation ------------------------------------------------------


def _fmt(value: float | None, digits: int = 3) -> str:
    """A number for a table, or ``n/a`` when undefined."""
    return "n/a" if value is None else f"{value:.{digits}f}"


def _fmt_ci(interval: Sequence[float] | None) -> str:
    """``95% CI [lo, hi]``, or nothing when there is no interval."""
    return "" if not interval else f"95% CI [{interval[0]:.3f}, {interval[1]:.3f}]"


def format_metrics(metrics: dict[str, Any]) -> str:
    """A readable report of :func:`evaluate_run`'s result, in the style of the article's Table 2.

    Per-class precision, recall, F1 and support; accuracy, weighted and macro F1; AUROC and
    average precision, with bootstrap intervals; the confusion matrix; sensitivity and
    specificity at 0.5 (the headline rule) and at the validation threshold.
    """
    out = io.StringIO()
    w = out.write
    tta = " (each image averaged with its mirror image)" if metrics.get("tta") else ""
    w(
        f"{metrics['split']} split: {metrics['n_images']} images of {metrics['n_patients']} "
        f"patients from {metrics['data_root']}{tta}\n"
    )
    w(f"weights: {metrics['weights_used']}\n")
    left_out = metrics.get("left_out") or []
    if left_out:
        w(f"left out: {len(left_out)} images that could not be decoded\n")
        w("".join(f"  {item['path']}: {item['reason']}\n" for item in left_out[:10]))
        if len(left_out) > 10:
            w(f"  ... and {len(left_out) - 10} more (metrics-*.json lists them all)\n")
    if metrics.get("is_demo"):
        w("*** synthetic demo data: these numbers are not medical results ***\n")
    w(f"\n{'':18}{'precision':>10}{'recall':>10}{'f1-score':>10}{'support':>10}\n")
    for name in CLASSES:
        c = metrics["per_class"][name]
        w(
            f"{name:18}{_fmt(c['precision']):>10}{_fmt(c['recall']):>10}"
            f"{_fmt(c['f1']):>10}{c['support']:>10}\n"
        )
    ci = metrics["ci95"]
    n = metrics["n_images"]
    blank = ""
    w(f"{'accuracy':38}{_fmt(metrics['accuracy']):>10}{n:>10}  {_fmt_ci(ci['accuracy'])}\n")
    w(f"{'weighted F1':38}{_fmt(metrics['weighted_f1']):>10}{blank:10}  ")
    w(f"{_fmt_ci(ci['weighted_f1'])}\n")
    w(f"{'macro F1':38}{_fmt(metrics['macro_f1']):>10}\n")
    w(f"\nAUROC             {_fmt(metrics['roc_auc'])}  {_fmt_ci(ci['roc_auc'])}\n")
    w(f"average precision {_fmt(metrics['average_precision'])}\n")
    (tn, fp), (fn, tp) = metrics["confusion_matrix"]
    w(f"sensitivity       {_fmt(metrics['sensitivity'])}  {_fmt_ci(ci['sensitivity'])}\n")
    w(f"specificity       {_fmt(metrics['specificity'])}  {_fmt_ci(ci['specificity'])}\n")
    w("(intervals: bootstrap over patients, each with all of their images)\n")
    w(f"\nconfusion matrix at {metrics['threshold']:g} (rows: true, columns: predicted)\n")
    w(f"{'':18}{'NORMAL':>10}{'PNEUMONIA':>10}\n")
    w(f"{'NORMAL':18}{tn:>10}{fp:>10}\n{'PNEUMONIA':18}{fn:>10}{tp:>10}\n")
    vt = metrics["val_threshold"]
    w(f"\n{'rule':26}{'threshold':>10}{'sens.':>8}{'spec.':>8}{'acc.':>8}{'w. F1':>8}\n")
    rows = [("argmax (headline)", metrics), ("validation Youden's J", vt)]
    for label, m in rows:
        t = metrics["threshold"] if m is metrics else vt["threshold"]
        w(
            f"{label:26}{t:>10.3f}{_fmt(m['sensitivity']):>8}{_fmt(m['specificity']):>8}"
            f"{_fmt(m['accuracy']):>8}{_fmt(m['weighted_f1']):>8}\n"
        )
    w(f"threshold source: {vt['source']}\n")
    return out.getvalue()
