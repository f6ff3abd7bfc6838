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

from collections.abc import Iterable, Iterator
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

from helpers.config import CLASSES

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
