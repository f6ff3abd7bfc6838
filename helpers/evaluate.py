"""Metrics, bootstrap confidence intervals and decision thresholds.

Everything here works on two plain arrays: ``y_true`` (0 = NORMAL, 1 = PNEUMONIA, the order
of :data:`helpers.config.CLASSES`) and ``p_pneumonia``, the model's probability of the
positive class, ``softmax(logits)[:, 1]``. An image is *predicted* PNEUMONIA when
``p_pneumonia >= threshold``. Only :func:`predict_proba` touches a model; the rest is numpy
and scikit-learn, so the same functions score any classifier.

Why a bootstrap: the official test split has only 624 images, so a metric moves by several
points between equally good models. :func:`bootstrap_ci` puts an interval around each number
the article reports, so the tutorial can say how much of a difference is noise.
"""

from __future__ import annotations

import io
import json
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from sklearn.metrics import (
    average_precision_score,
    classification_report,
    precision_recall_curve,
    roc_auc_score,
    roc_curve,
)

from helpers.config import CLASSES, Config, outputs_dir
from helpers.data import DatasetError, is_demo_folder, make_splits, scan
from helpers.files import atomic_write_text
from helpers.preprocess import (
    BatchLoader,
    ImageCache,
    ImageError,
    build_cache,
    load_gray,
    normalize_batch,
)
from helpers.train import (
    PreparedData,
    RunError,
    load_model_from_run,
    pick_device,
    prepare_data,
)

METRIC_KEYS: tuple[str, ...] = (
    "accuracy",
    "weighted_f1",
    "macro_f1",
    "roc_auc",
    "average_precision",
    "sensitivity",
    "specificity",
    "balanced_accuracy",
    "threshold",
    "confusion_matrix",
    "per_class",
    "n_images",
    "undefined",
)
"""The keys :func:`compute_metrics` always returns, in this order."""

BOOTSTRAP_CHUNK_ELEMENTS = 4_000_000
"""Largest (resamples x images) block held in memory at once by :func:`bootstrap_ci`."""


# --- input checks ------------------------------------------------------------------------


def _check_labels(y: Any, name: str) -> np.ndarray:
    """Return ``y`` as a 1-D int64 array of 0/1, or raise ``ValueError`` saying what is wrong."""
    arr = np.asarray(y)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"{name} is empty: there is nothing to evaluate")
    if arr.dtype.kind == "f" and not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or infinite values")
    bad = ~np.isin(arr, (0, 1))
    if bad.any():
        shown = np.unique(arr[bad])[:5].tolist()
        raise ValueError(f"{name} must hold only 0 (NORMAL) and 1 (PNEUMONIA); found {shown}")
    return arr.astype(np.int64)


def _check_scores(y_true: Any, p: Any) -> tuple[np.ndarray, np.ndarray]:
    """Validate labels and probabilities together (same length, finite, inside [0, 1])."""
    y = _check_labels(y_true, "y_true")
    scores = np.asarray(p, dtype=np.float64)
    if scores.ndim != 1:
        raise ValueError(f"p_pneumonia must be 1-D, got shape {scores.shape}")
    if scores.shape != y.shape:
        raise ValueError(
            f"y_true and p_pneumonia differ in length: {y.shape[0]} labels, {scores.shape[0]} scores"
        )
    if not np.all(np.isfinite(scores)):
        raise ValueError(f"p_pneumonia has {int((~np.isfinite(scores)).sum())} NaN/infinite values")
    if scores.min() < 0.0 or scores.max() > 1.0:
        raise ValueError(
            f"p_pneumonia must be probabilities in [0, 1]; got range "
            f"[{scores.min():.4g}, {scores.max():.4g}] (did you pass logits?)"
        )
    return y, scores


def _check_threshold(threshold: float) -> float:
    """A decision threshold must be a finite number."""
    value = float(threshold)
    if not np.isfinite(value):
        raise ValueError(f"threshold must be a finite number, got {threshold!r}")
    return value


def _ratio(num: float, den: float) -> float:
    """``num / den``, or 0.0 when ``den`` is 0 (scikit-learn's ``zero_division=0``)."""
    return float(num) / float(den) if den else 0.0


# --- point metrics -----------------------------------------------------------------------


def confusion_matrix_2x2(y_true: np.ndarray, y_pred: np.ndarray) -> np.ndarray:
    """Counts ``[[TN, FP], [FN, TP]]``: rows = true class, columns = predicted, NORMAL first."""
    y = _check_labels(y_true, "y_true")
    pred = _check_labels(y_pred, "y_pred")
    if y.shape != pred.shape:
        raise ValueError(f"y_true has {y.size} labels but y_pred has {pred.size}")
    return np.bincount(2 * y + pred, minlength=4).reshape(2, 2)


def compute_metrics(y_true: Any, p_pneumonia: Any, threshold: float = 0.5) -> dict[str, Any]:
    """Every number the tutorial reports for one split, as a JSON-ready dict.

    Keys (always all present, see :data:`METRIC_KEYS`): ``accuracy``, ``weighted_f1``,
    ``macro_f1``, ``roc_auc``, ``average_precision``, ``sensitivity`` (recall of PNEUMONIA),
    ``specificity`` (recall of NORMAL), ``balanced_accuracy``, ``threshold``,
    ``confusion_matrix`` (``[[TN, FP], [FN, TP]]``), ``per_class`` (precision, recall, f1,
    support for NORMAL and PNEUMONIA), ``n_images`` and ``undefined``.

    ``undefined`` maps a metric name to the reason it could not be computed (empty when
    everything is defined). A split holding one class only gives ``None`` for ``roc_auc``,
    ``average_precision`` and the recall of the missing class instead of crashing. A class
    never predicted has precision 0.0 (scikit-learn's ``zero_division=0``), noted there too.
    Empty or malformed input raises ``ValueError``.
    """
    y, p = _check_scores(y_true, p_pneumonia)
    t = _check_threshold(threshold)
    pred = (p >= t).astype(np.int64)
    cm = confusion_matrix_2x2(y, pred)
    tn, fp, fn, tp = (int(v) for v in cm.ravel())
    n = int(y.size)
    undefined: dict[str, str] = {}

    per_class: dict[str, dict[str, Any]] = {}
    for label, name in enumerate(CLASSES):
        support = int(cm[label].sum())
        predicted = int(cm[:, label].sum())
        hits = int(cm[label, label])
        precision = _ratio(hits, predicted)
        recall = _ratio(hits, support)
        f1 = _ratio(2 * hits, support + predicted)
        if predicted == 0:
            undefined[f"precision_{name}"] = f"no image was predicted {name}; reported as 0.0"
        if support == 0:
            undefined[f"recall_{name}"] = f"no {name} image in y_true; reported as 0.0"
        per_class[name] = {"precision": precision, "recall": recall, "f1": f1, "support": support}

    f1s = [per_class[name]["f1"] for name in CLASSES]
    supports = [per_class[name]["support"] for name in CLASSES]
    both_present = all(s > 0 for s in supports)

    sensitivity: float | None = _ratio(tp, tp + fn) if tp + fn else None
    specificity: float | None = _ratio(tn, tn + fp) if tn + fp else None
    if sensitivity is None:
        undefined["sensitivity"] = "no PNEUMONIA image in y_true"
    if specificity is None:
        undefined["specificity"] = "no NORMAL image in y_true"
    balanced: float | None = None
    if sensitivity is not None and specificity is not None:
        balanced = (sensitivity + specificity) / 2
    else:
        undefined["balanced_accuracy"] = "needs both classes in y_true"

    roc_auc: float | None = None
    average_precision: float | None = None
    if both_present:
        roc_auc = float(roc_auc_score(y, p))
        average_precision = float(average_precision_score(y, p))
    else:
        only = CLASSES[int(y[0])]
        undefined["roc_auc"] = f"only one class ({only}) in y_true; ranking metrics need both"
        undefined["average_precision"] = undefined["roc_auc"]

    return {
        "accuracy": _ratio(tn + tp, n),
        "weighted_f1": sum(f * s for f, s in zip(f1s, supports, strict=True)) / n,
        "macro_f1": sum(f1s) / len(f1s),
        "roc_auc": roc_auc,
        "average_precision": average_precision,
        "sensitivity": sensitivity,
        "specificity": specificity,
        "balanced_accuracy": balanced,
        "threshold": t,
        "confusion_matrix": cm.astype(int).tolist(),
        "per_class": per_class,
        "n_images": n,
        "undefined": undefined,
    }


def classification_report_table(y_true: Any, y_pred: Any) -> pd.DataFrame:
    """The article's Table 2: scikit-learn's classification report as a DataFrame.

    Rows ``NORMAL``, ``PNEUMONIA``, ``accuracy``, ``macro avg``, ``weighted avg``; columns
    ``precision``, ``recall``, ``f1-score``, ``support``. As in the printed report, the
    ``accuracy`` row holds the accuracy in ``f1-score`` (precision and recall are NaN) and the
    number of images in ``support``. Both labels are always listed, even if one is absent.
    """
    y = _check_labels(y_true, "y_true")
    pred = _check_labels(y_pred, "y_pred")
    if y.shape != pred.shape:
        raise ValueError(f"y_true has {y.size} labels but y_pred has {pred.size}")
    report = classification_report(
        y, pred, labels=[0, 1], target_names=list(CLASSES), output_dict=True, zero_division=0
    )
    columns = ["precision", "recall", "f1-score", "support"]
    rows = {name: report[name] for name in (*CLASSES, "macro avg", "weighted avg")}
    table = pd.DataFrame.from_dict(rows, orient="index")[columns]
    accuracy = pd.DataFrame(
        {"precision": np.nan, "recall": np.nan, "f1-score": report["accuracy"], "support": y.size},
        index=["accuracy"],
    )
    table = pd.concat(
        [table.loc[list(CLASSES)], accuracy, table.loc[["macro avg", "weighted avg"]]]
    )
    table["support"] = table["support"].astype(int)
    return table


def confusion_counts_and_percent(cm: Any) -> tuple[np.ndarray, np.ndarray]:
    """A 2x2 confusion matrix as ``(counts, row_percent)``.

    ``row_percent[i, j]`` is the share (0-100) of true class ``i`` predicted as ``j``, so each
    row sums to 100: the diagonal is specificity (NORMAL) and sensitivity (PNEUMONIA). A row
    with no images is NaN, not a misleading 0.
    """
    counts = np.asarray(cm)
    if counts.shape != (2, 2):
        raise ValueError(f"confusion matrix must be 2x2, got shape {counts.shape}")
    if np.any(counts < 0) or not np.all(np.equal(np.mod(counts, 1), 0)):
        raise ValueError("confusion matrix must hold non-negative whole counts")
    counts = counts.astype(np.int64)
    totals = counts.sum(axis=1, keepdims=True).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        percent = np.where(totals > 0, 100.0 * counts / totals, np.nan)
    return counts, percent


# --- bootstrap ---------------------------------------------------------------------------


def _resample_counts(n: int, n_resamples: int, seed: int) -> Iterator[np.ndarray]:
    """Yield blocks of bootstrap resamples as counts: ``counts[r, i]`` = copies of item ``i``.

    A resample drawn with replacement is the original data with item ``i`` repeated
    ``counts[r, i]`` times, so every statistic becomes a weighted sum over the ``n`` original
    items: no per-resample copy or sort is needed. The indices come from one
    ``np.random.default_rng(seed)``, drawn block after block, so the result depends on
    ``seed`` only.
    """
    rng = np.random.default_rng(seed)
    block = max(1, BOOTSTRAP_CHUNK_ELEMENTS // n)
    done = 0
    while done < n_resamples:
        rows = min(block, n_resamples - done)
        idx = rng.integers(0, n, size=(rows, n))
        flat = idx + n * np.arange(rows)[:, None]
        yield np.bincount(flat.ravel(), minlength=rows * n).reshape(rows, n)
        done += rows


def bootstrap_statistics(
    y_true: Any, p_pneumonia: Any, counts: np.ndarray, threshold: float = 0.5
) -> dict[str, np.ndarray]:
    """Accuracy, weighted F1 and AUROC of many resamples at once, given as item counts.

    ``counts`` is ``(R, n)``: how many times each of the ``n`` items appears in each of ``R``
    resamples (see :func:`_resample_counts`). Returns arrays of length ``R``; ``roc_auc`` is
    NaN for resamples holding one class only.

    AUROC is the Mann-Whitney statistic: the chance that a random PNEUMONIA image scores
    higher than a random NORMAL one, ties counting one half (the midrank rule, which is what
    ``roc_auc_score`` computes). The items are sorted by score once; for each resample the
    weighted number of NORMAL images below each distinct score is a cumulative sum.
    Public so the tests can compare single resamples with scikit-learn.
    """
    y, p = _check_scores(y_true, p_pneumonia)
    t = _check_threshold(threshold)
    w = np.asarray(counts, dtype=np.float64)
    if w.ndim != 2 or w.shape[1] != y.size:
        raise ValueError(f"counts must have shape (R, {y.size}), got {w.shape}")
    pred = p >= t
    pos = y == 1
    # Confusion counts per resample: weighted sums over the original items, one matrix product.
    cells = np.stack([pos & pred, pos & ~pred, ~pos & pred, ~pos & ~pred], axis=1)
    tp, fn, fp, tn = (w @ cells.astype(np.float64)).T
    n = w.sum(axis=1)
    n_pos = tp + fn
    n_neg = tn + fp
    den_pos = 2 * tp + fp + fn  # F1 = 2TP / (2TP + FP + FN); 0 when the class is nowhere
    den_neg = 2 * tn + fn + fp
    f1_pos = np.divide(2 * tp, den_pos, out=np.zeros_like(tp), where=den_pos > 0)
    f1_neg = np.divide(2 * tn, den_neg, out=np.zeros_like(tn), where=den_neg > 0)
    accuracy = (tp + tn) / n
    weighted_f1 = (n_pos * f1_pos + n_neg * f1_neg) / n

    # AUROC: sort the items by score once (the same order serves every resample). For each
    # PNEUMONIA item, the NORMAL weight strictly below its score and the NORMAL weight tied
    # with it are differences of one cumulative sum, read at the first and last position of
    # its tie group.
    order = np.argsort(p, kind="stable")
    p_sorted = p[order]
    positions = np.arange(y.size)
    new_group = np.r_[True, p_sorted[1:] != p_sorted[:-1]]
    group_start = np.maximum.accumulate(np.where(new_group, positions, 0))
    group_last = np.r_[p_sorted[1:] != p_sorted[:-1], True]
    group_end = np.minimum.accumulate(np.where(group_last, positions, y.size - 1)[::-1])[::-1]
    pos_sorted = pos[order]
    w_neg_sorted = w[:, order]
    w_neg_sorted[:, pos_sorted] = 0.0
    neg_cum = np.zeros((w.shape[0], y.size + 1))
    np.cumsum(w_neg_sorted, axis=1, out=neg_cum[:, 1:])
    at_pos = np.flatnonzero(pos_sorted)
    neg_below = neg_cum[:, group_start[at_pos]]
    neg_tied = neg_cum[:, group_end[at_pos] + 1] - neg_below
    wins = np.einsum("rj,rj->r", w[:, order[at_pos]], neg_below + 0.5 * neg_tied)
    with np.errstate(invalid="ignore", divide="ignore"):
        roc_auc = np.where((n_pos > 0) & (n_neg > 0), wins / (n_pos * n_neg), np.nan)
    return {"accuracy": accuracy, "weighted_f1": weighted_f1, "roc_auc": roc_auc}


def bootstrap_ci(
    y_true: Any,
    p_pneumonia: Any,
    threshold: float = 0.5,
    n_resamples: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, Any]:
    """Percentile bootstrap intervals for accuracy, weighted F1 and AUROC.

    The images are resampled with replacement ``n_resamples`` times (all draws from one
    ``np.random.default_rng(seed)``, so the same seed gives the same intervals) and each metric
    is recomputed on every resample; the interval is the central ``level`` share of those
    values. Vectorised over resamples: 1,000 resamples of 624 images take well under a second.

    Returns ``accuracy``, ``weighted_f1`` and ``roc_auc`` as ``[lo, hi]`` (``roc_auc`` is
    ``None`` if no resample holds both classes), plus ``level``, ``n_resamples``, ``seed``,
    ``threshold`` and ``n_skipped_roc_auc``: resamples left out of the AUROC interval because
    they held one class only (reported, not dropped silently).
    """
    y, p = _check_scores(y_true, p_pneumonia)
    t = _check_threshold(threshold)
    if int(n_resamples) < 1:
        raise ValueError(f"n_resamples must be at least 1, got {n_resamples}")
    if not 0.0 < float(level) < 1.0:
        raise ValueError(f"level must be strictly between 0 and 1, got {level}")
    parts: dict[str, list[np.ndarray]] = {"accuracy": [], "weighted_f1": [], "roc_auc": []}
    for counts in _resample_counts(y.size, int(n_resamples), int(seed)):
        stats = bootstrap_statistics(y, p, counts, t)
        for key in parts:
            parts[key].append(stats[key])
    values = {key: np.concatenate(chunks) for key, chunks in parts.items()}
    auc = values["roc_auc"]
    valid_auc = auc[~np.isnan(auc)]
    q = [100 * (1 - level) / 2, 100 * (1 + level) / 2]

    def interval(v: np.ndarray) -> list[float] | None:
        return [float(x) for x in np.percentile(v, q)] if v.size else None

    return {
        "accuracy": interval(values["accuracy"]),
        "weighted_f1": interval(values["weighted_f1"]),
        "roc_auc": interval(valid_auc),
        "level": float(level),
        "n_resamples": int(n_resamples),
        "seed": int(seed),
        "threshold": t,
        "n_skipped_roc_auc": int(auc.size - valid_auc.size),
    }


# --- thresholds and curves ---------------------------------------------------------------


def youden_threshold(y_true: Any, p_pneumonia: Any) -> float:
    """The threshold maximising Youden's J = sensitivity + specificity - 1.

    Choose it on the VALIDATION split, then apply the fixed number to the test split. Tuning
    it on test would fit the threshold to the very images used to report performance, so the
    test numbers would be optimistically biased and no longer an honest estimate.

    Candidates are the ROC curve's thresholds, which are observed scores, so predicting
    PNEUMONIA when ``p >= t`` reproduces exactly the J found. Among equally good thresholds the
    highest is returned. If no threshold beats "always NORMAL", a value just above the largest
    score is returned (everything predicted NORMAL). Needs both classes.
    """
    y, p = _check_scores(y_true, p_pneumonia)
    if np.unique(y).size < 2:
        raise ValueError("youden_threshold needs both NORMAL and PNEUMONIA images in y_true")
    fpr, tpr, thresholds = roc_curve(y, p, drop_intermediate=False)
    best = int(np.argmax(tpr - fpr))  # thresholds decrease, so the first max is the highest
    if not np.isfinite(thresholds[best]):
        return float(np.nextafter(p.max(), np.inf))
    return float(thresholds[best])


def roc_points(y_true: Any, p_pneumonia: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(fpr, tpr, thresholds)`` of the ROC curve, for plotting without importing sklearn."""
    y, p = _check_scores(y_true, p_pneumonia)
    if np.unique(y).size < 2:
        raise ValueError("a ROC curve needs both NORMAL and PNEUMONIA images in y_true")
    fpr, tpr, thresholds = roc_curve(y, p)
    return fpr, tpr, thresholds


def pr_points(y_true: Any, p_pneumonia: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(precision, recall, thresholds)`` of the precision-recall curve (PNEUMONIA positive)."""
    y, p = _check_scores(y_true, p_pneumonia)
    if not (y == 1).any():
        raise ValueError("a precision-recall curve needs at least one PNEUMONIA image in y_true")
    precision, recall, thresholds = precision_recall_curve(y, p)
    return precision, recall, thresholds


# --- model outputs -----------------------------------------------------------------------


def predict_proba(
    model: torch.nn.Module, batches: Iterable[Any], device: str | torch.device = "cpu"
) -> tuple[np.ndarray, np.ndarray]:
    """Run ``model`` over ``(x, y)`` batches; return ``(y_true, p_pneumonia)`` as numpy arrays.

    The model is switched to eval mode (dropout off, BatchNorm frozen) and run under
    ``torch.inference_mode()``, so the result is deterministic; its previous mode is restored
    afterwards. ``batches`` is any iterable of pairs, e.g. a
    :class:`helpers.preprocess.BatchLoader`. Raises ``ValueError`` if it yields nothing or the
    model does not return ``(B, 2)`` logits.
    """
    was_training = model.training
    labels: list[np.ndarray] = []
    probs: list[np.ndarray] = []
    model.eval()
    try:
        with torch.inference_mode():
            for i, batch in enumerate(batches):
                x, y = batch
                x = torch.as_tensor(x).to(device)
                logits = model(x)
                if logits.ndim != 2 or logits.shape[1] != len(CLASSES):
                    raise ValueError(
                        f"batch {i}: model returned shape {tuple(logits.shape)}, "
                        f"expected (B, {len(CLASSES)}) logits"
                    )
                y_arr = torch.as_tensor(y).reshape(-1).cpu().numpy().astype(np.int64)
                if y_arr.size != logits.shape[0]:
                    raise ValueError(f"batch {i}: {y_arr.size} labels for {logits.shape[0]} images")
                probs.append(torch.softmax(logits.float(), dim=1)[:, 1].cpu().numpy())
                labels.append(y_arr)
    finally:
        model.train(was_training)
    if not labels:
        raise ValueError("predict_proba: the batches were empty (no images to score)")
    return np.concatenate(labels), np.concatenate(probs).astype(np.float64)


def most_confident_mistakes(
    y_true: Any, p_pneumonia: Any, k: int, threshold: float = 0.5
) -> np.ndarray:
    """Indices of up to ``k`` wrong predictions, most confident in the wrong class first.

    Confidence in the wrong class is ``p`` for a NORMAL image called PNEUMONIA and ``1 - p``
    for a PNEUMONIA image called NORMAL. Ties keep index order. Fewer than ``k`` indices come
    back when there are fewer mistakes.
    """
    y, p = _check_scores(y_true, p_pneumonia)
    t = _check_threshold(threshold)
    if int(k) < 0:
        raise ValueError(f"k must be non-negative, got {k}")
    pred = (p >= t).astype(np.int64)
    wrong = np.flatnonzero(pred != y)
    confidence = np.where(y[wrong] == 0, p[wrong], 1.0 - p[wrong])
    order = np.argsort(-confidence, kind="stable")
    return wrong[order][: int(k)]


# --- evaluating a run folder -------------------------------------------------------------

HEADLINE_THRESHOLD = 0.5
"""The article's rule: predict the class with the larger softmax output, i.e. ``p >= 0.5``."""

EVAL_SPLITS: tuple[str, ...] = ("test", "val")
"""Splits :func:`evaluate_run` can score."""

RUN_METRIC_KEYS: tuple[str, ...] = (
    "accuracy",
    "weighted_f1",
    "macro_f1",
    "roc_auc",
    "average_precision",
    "sensitivity",
    "specificity",
    "threshold",
    "confusion_matrix",
    "per_class",
    "ci95",
    "n_images",
    "weights_used",
    "val_threshold",
    "split",
    "data_root",
    "is_demo",
)
"""The keys of ``metrics-<split>.json`` (and of :func:`evaluate_run`'s result), in this order."""

VAL_THRESHOLD_KEYS: tuple[str, ...] = (
    "threshold",
    "source",
    "sensitivity",
    "specificity",
    "accuracy",
    "weighted_f1",
)
"""The keys of ``metrics["val_threshold"]``."""

CI_KEYS: tuple[str, ...] = ("accuracy", "weighted_f1", "roc_auc")
"""The metrics given a bootstrap interval in ``metrics["ci95"]``."""


def _read_run_config(run_dir: Path) -> dict[str, Any]:
    """``run_dir/config.json`` as a dict; ``{}`` when absent (the data root is then unknown)."""
    path = run_dir / "config.json"
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise RunError(f"{path}: unreadable run config ({err})") from err


def _same_folder(a: str | Path, b: str | Path) -> bool:
    """True when ``a`` and ``b`` name the same folder (after ``~`` and symlinks)."""
    try:
        return Path(a).expanduser().resolve() == Path(b).expanduser().resolve()
    except OSError:
        return False


def _cached_rows(cache: ImageCache, table: pd.DataFrame) -> tuple[list[int], list[int], list[str]]:
    """Cache rows and targets of ``table``'s images, plus the paths that failed to decode."""
    indices: list[int] = []
    targets: list[int] = []
    failed: list[str] = []
    for path, target in zip(table["path"], table["target"], strict=True):
        row = cache.index_of(path)
        if cache.ok[row]:
            indices.append(row)
            targets.append(int(target))
        else:
            failed.append(str(path))
    return indices, targets, failed


def _score_rows(
    model: torch.nn.Module,
    cache: ImageCache,
    indices: list[int],
    targets: list[int],
    config: Config,
    device: torch.device,
) -> tuple[np.ndarray, np.ndarray]:
    """``(y_true, p_pneumonia)`` for cache rows, in order: no augmentation, no shuffling."""
    loader = BatchLoader(
        cache,
        indices,
        targets,
        config.eval_batch_size,
        shuffle=False,
        augment=False,
        seed=config.seed,
        device=device,
    )
    return predict_proba(model, loader, device)


def _validation_threshold(
    model: torch.nn.Module,
    prepared: PreparedData | None,
    unreachable: str,
    recorded_fingerprint: str | None,
    config: Config,
    device: torch.device,
) -> tuple[float, str]:
    """Youden's J threshold on the run's validation split, or 0.5 and the reason why not."""
    if prepared is None:
        return HEADLINE_THRESHOLD, f"fallback 0.5: validation data not reachable ({unreachable})"
    root = prepared.location.root
    indices, targets, _ = _cached_rows(prepared.cache, prepared.splits["val"])
    try:
        if not indices:
            raise ValueError("the validation split is empty")
        y_val, p_val = _score_rows(model, prepared.cache, indices, targets, config, device)
        threshold = youden_threshold(y_val, p_val)
    except ValueError as err:
        return HEADLINE_THRESHOLD, f"fallback 0.5: no Youden threshold on {root} validation ({err})"
    source = f"Youden's J on the validation split ({len(indices)} images of {root})"
    if recorded_fingerprint and recorded_fingerprint != prepared.fingerprint():
        source += "; warning: the files differ from those at training time"
    return threshold, source


def evaluate_run(
    run_dir: str | Path,
    data_dir: str | Path | None = None,
    split: str = "test",
    device: str | None = None,
    n_resamples: int = 1000,
    progress: bool = True,
) -> dict[str, Any]:
    """Score a run folder's ``best.pt`` on one split; write ``metrics-<split>.json`` and
    ``predictions-<split>.csv`` into the run folder and return the metrics.

    Data: ``data_dir`` if given (it may hold only ``test/``), else the training data root
    recorded in ``run_dir/config.json``. ``split="test"`` is the official test folder;
    ``"val"`` is the patient-grouped validation split recomputed with :func:`make_splits`
    from the run's config (identical to training's: it is seeded). Images are decoded
    through the cache (``outputs_dir()/cache``, reused when it matches) and scored without
    augmentation. Images that fail to decode are left out, with a warning giving the count.

    The headline numbers use the article's argmax rule (threshold 0.5). A second threshold,
    Youden's J, is chosen on the run's VALIDATION split, recomputed from the training data
    root in ``config.json``, never on the evaluated split (unless that split is ``val``
    itself, which ``source`` then says). When that data cannot be reached the threshold
    falls back to 0.5 and ``source`` says why.

    Keys (stable; :data:`RUN_METRIC_KEYS`):

    * ``accuracy``, ``weighted_f1``, ``macro_f1``, ``roc_auc``, ``average_precision``,
      ``sensitivity`` (recall of PNEUMONIA), ``specificity`` (recall of NORMAL): floats at
      ``threshold``; ``roc_auc``/``average_precision``/sensitivity/specificity are ``None``
      when the split lacks a class;
    * ``threshold``: 0.5; ``confusion_matrix``: ``[[TN, FP], [FN, TP]]``;
    * ``per_class``: ``{"NORMAL"|"PNEUMONIA": {precision, recall, f1, support}}``;
    * ``ci95``: ``{accuracy, weighted_f1, roc_auc: [lo, hi]}``, percentile bootstrap of
      ``n_resamples`` resamples seeded with the run's ``config.seed``;
    * ``n_images``: images scored; ``weights_used``: ``"imagenet"`` or ``"none"``;
    * ``val_threshold``: ``{threshold, source, sensitivity, specificity, accuracy,
      weighted_f1}``, the Youden threshold and this split's numbers at it;
    * ``split``, ``data_root`` (the folder scored), ``is_demo`` (synthetic data: not a
      medical result).

    ``predictions-<split>.csv`` has one row per scored image: ``path``, ``target`` (0/1),
    ``p_pneumonia``. Raises :class:`RunError` for a folder without ``best.pt``,
    :class:`DatasetError` when the data cannot be found or the split is empty.
    """
    if split not in EVAL_SPLITS:
        raise ValueError(f"split must be one of {EVAL_SPLITS}, got {split!r}")
    run_dir = Path(run_dir)
    best = run_dir / "best.pt"
    if not best.is_file():
        raise RunError(f"{best}: no such checkpoint (is {run_dir} a run folder that trained?)")
    dev = pick_device(device)
    model, config, state = load_model_from_run(run_dir, "best.pt", device=dev)
    data_info = _read_run_config(run_dir).get("data", {})
    train_root = data_info.get("root")

    # The training data gives the validation split for the threshold, and is the data
    # scored when no data_dir is given.
    prepared: PreparedData | None = None
    unreachable = ""
    if train_root is None:
        unreachable = f"{run_dir / 'config.json'} records no training data root"
    else:
        try:
            prepared = prepare_data(config, train_root, progress=progress)
        except (DatasetError, OSError) as err:
            unreachable = str(err)

    on_training_data = data_dir is None or (
        train_root is not None and _same_folder(data_dir, train_root)
    )
    if on_training_data:
        if prepared is None:
            raise DatasetError(
                f"cannot evaluate {run_dir}: its training data is not reachable ({unreachable}); "
                "pass the data folder explicitly"
            )
        root = Path(train_root)
        table = prepared.splits[split]
        cache = prepared.cache
        is_demo = bool(data_info.get("is_demo")) or is_demo_folder(root)
    else:
        root = Path(data_dir).expanduser()
        scanned = scan(root)
        if len(scanned.problems):
            n_bad = len(scanned.problems)
            print(f"skipping {n_bad} unusable files in {root} (see `python -m helpers scan`)")
        if split == "test":
            table = scanned.images[scanned.images["split"] == "test"].reset_index(drop=True)
        else:
            table = make_splits(scanned.images, config)["val"]
        cache = None
        is_demo = is_demo_folder(root)
    if table.empty:
        raise DatasetError(f"{root}: no {split} images to evaluate")
    if cache is None:
        paths = table["path"].tolist()
        cache = build_cache(paths, config.image_size, outputs_dir() / "cache", progress=progress)
    indices, targets, failed = _cached_rows(cache, table)
    if failed:
        warnings.warn(
            f"{len(failed)} of {len(table)} {split} images could not be decoded and are left out "
            f"(e.g. {failed[0]}; reasons in {cache.index_path})",
            stacklevel=2,
        )
    if not indices:
        raise DatasetError(f"{root}: none of the {split} images could be decoded")
    y, p = _score_rows(model, cache, indices, targets, config, dev)

    threshold, source = _validation_threshold(
        model, prepared, unreachable, data_info.get("fingerprint"), config, dev
    )
    if split == "val" and on_training_data:
        source += "; chosen on the evaluated split itself, so its numbers there are optimistic"

    headline = compute_metrics(y, p, HEADLINE_THRESHOLD)
    at_val = compute_metrics(y, p, threshold)
    ci = bootstrap_ci(y, p, HEADLINE_THRESHOLD, n_resamples=n_resamples, seed=config.seed)
    metrics: dict[str, Any] = {key: headline[key] for key in RUN_METRIC_KEYS if key in headline}
    metrics.update(
        ci95={key: ci[key] for key in CI_KEYS},
        weights_used=state.get("weights_used", "unknown"),
        val_threshold={
            "threshold": threshold,
            "source": source,
            **{key: at_val[key] for key in VAL_THRESHOLD_KEYS[2:]},
        },
        split=split,
        data_root=str(root),
        is_demo=is_demo,
    )
    metrics = {key: metrics[key] for key in RUN_METRIC_KEYS}

    predictions = pd.DataFrame(
        {"path": [cache.paths[i] for i in indices], "target": y, "p_pneumonia": p}
    )
    atomic_write_text(run_dir / f"predictions-{split}.csv", predictions.to_csv(index=False))
    atomic_write_text(run_dir / f"metrics-{split}.json", json.dumps(metrics, indent=2))
    return metrics


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
    w(f"{metrics['split']} split: {metrics['n_images']} images from {metrics['data_root']}\n")
    w(f"weights: {metrics['weights_used']}\n")
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


# --- single images -----------------------------------------------------------------------


@dataclass(frozen=True)
class ImagePrediction:
    """The model's answer for one image file, or why the file could not be read."""

    path: str
    p_pneumonia: float | None
    error: str | None = None

    def label(self, threshold: float = HEADLINE_THRESHOLD) -> str | None:
        """``NORMAL`` or ``PNEUMONIA`` at ``threshold``; ``None`` for an unreadable file."""
        if self.p_pneumonia is None:
            return None
        return CLASSES[int(self.p_pneumonia >= threshold)]


def predict_images(
    model: torch.nn.Module,
    paths: Sequence[str | Path],
    image_size: int,
    device: str | torch.device = "cpu",
    batch_size: int = 64,
) -> list[ImagePrediction]:
    """P(pneumonia) for image files, one :class:`ImagePrediction` per path, in order.

    Each file is decoded with :func:`load_gray` at ``image_size`` and normalised with
    :func:`normalize_batch`: the very steps of the evaluation cache and loader, so a file
    gets the probability :func:`evaluate_run` gives it (up to float rounding between batch
    sizes). A file that cannot be used (missing, empty, corrupt, a directory) gets ``error``
    with the reason instead; the others are still scored.
    """
    results: list[ImagePrediction | None] = [None] * len(paths)
    for start in range(0, len(paths), batch_size):
        arrays: list[np.ndarray] = []
        positions: list[int] = []
        for pos in range(start, min(start + batch_size, len(paths))):
            path = Path(paths[pos])
            if path.is_dir():
                results[pos] = ImagePrediction(
                    str(paths[pos]), None, "is a directory, not an image"
                )
                continue
            try:
                arrays.append(load_gray(path, image_size))
                positions.append(pos)
            except ImageError as err:
                results[pos] = ImagePrediction(str(paths[pos]), None, err.reason)
        if not arrays:
            continue
        x = normalize_batch(torch.from_numpy(np.stack(arrays))[:, None])
        _, probs = predict_proba(model, [(x, torch.zeros(len(arrays), dtype=torch.int64))], device)
        for pos, prob in zip(positions, probs, strict=True):
            results[pos] = ImagePrediction(str(paths[pos]), float(prob))
    return [r for r in results if r is not None]
