"""Metrics, patient-cluster bootstrap intervals and decision thresholds (numpy and scikit-learn).

Everything here works on plain arrays: ``y_true`` (0 = NORMAL, 1 = PNEUMONIA, the order of
:data:`helpers.config.CLASSES`) and ``p_pneumonia``, the model's probability of the positive
class, ``softmax(logits)[:, 1]``. An image is *predicted* PNEUMONIA when
``p_pneumonia >= threshold``. No model is involved, so the same functions score any classifier.

Why a bootstrap, and why by patient: the official test split has only 624 images from about
400 children, so a metric moves by several points between equally good models. Several images
of one child are not independent evidence (they share the anatomy, the machine and usually the
illness), so :func:`bootstrap_ci` resamples *patients*, each with all of their images.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.metrics import (
    average_precision_score,
    classification_report,
    confusion_matrix,
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

CI_KEYS: tuple[str, ...] = ("accuracy", "weighted_f1", "sensitivity", "specificity", "roc_auc")
"""The metrics :func:`bootstrap_ci` gives an interval for."""


# --- input checks ------------------------------------------------------------------------------


def as_labels(y: Any, name: str) -> np.ndarray:
    """``y`` as a 1-D int64 array of 0/1, or ``ValueError`` saying what is wrong."""
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


def as_scores(y_true: Any, p: Any) -> tuple[np.ndarray, np.ndarray]:
    """Labels and probabilities checked together (same length, finite, inside [0, 1])."""
    y = as_labels(y_true, "y_true")
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


def _as_threshold(threshold: float) -> float:
    value = float(threshold)
    if not np.isfinite(value):
        raise ValueError(f"threshold must be a finite number, got {threshold!r}")
    return value


# --- point metrics -----------------------------------------------------------------------------


def compute_metrics(y_true: Any, p_pneumonia: Any, threshold: float = 0.5) -> dict[str, Any]:
    """Every number the tutorial reports for one split, as a JSON-ready dict.

    Keys (always all present, :data:`METRIC_KEYS`): ``accuracy``, ``weighted_f1``,
    ``macro_f1``, ``roc_auc``, ``average_precision``, ``sensitivity`` (recall of PNEUMONIA),
    ``specificity`` (recall of NORMAL), ``balanced_accuracy``, ``threshold``,
    ``confusion_matrix`` (``[[TN, FP], [FN, TP]]``), ``per_class`` (precision, recall, f1,
    support of NORMAL and PNEUMONIA), ``n_images`` and ``undefined``.

    Computed with scikit-learn's ``classification_report`` and ``confusion_matrix`` (both
    labels always listed). ``undefined`` maps a metric to the reason it could not be computed:
    a split holding one class gives ``None`` for ``roc_auc``, ``average_precision``,
    sensitivity or specificity instead of crashing, and a class never predicted has
    precision 0.0 (``zero_division=0``), noted there too.
    """
    y, p = as_scores(y_true, p_pneumonia)
    t = _as_threshold(threshold)
    pred = (p >= t).astype(np.int64)
    cm = confusion_matrix(y, pred, labels=[0, 1])
    report = classification_report(
        y, pred, labels=[0, 1], target_names=list(CLASSES), output_dict=True, zero_division=0
    )
    undefined: dict[str, str] = {}
    per_class = _per_class(report, cm, undefined)
    sensitivity = per_class["PNEUMONIA"]["recall"] if cm[1].sum() else None
    specificity = per_class["NORMAL"]["recall"] if cm[0].sum() else None
    if sensitivity is None:
        undefined["sensitivity"] = "no PNEUMONIA image in y_true"
    if specificity is None:
        undefined["specificity"] = "no NORMAL image in y_true"
    balanced = None
    if sensitivity is not None and specificity is not None:
        balanced = (sensitivity + specificity) / 2
    else:
        undefined["balanced_accuracy"] = "needs both classes in y_true"
    roc_auc = average_precision = None
    if cm[0].sum() and cm[1].sum():
        roc_auc = float(roc_auc_score(y, p))
        average_precision = float(average_precision_score(y, p))
    else:
        only = CLASSES[int(y[0])]
        undefined["roc_auc"] = f"only one class ({only}) in y_true; ranking metrics need both"
        undefined["average_precision"] = undefined["roc_auc"]
    return {
        "accuracy": float(report["accuracy"]),
        "weighted_f1": float(report["weighted avg"]["f1-score"]),
        "macro_f1": float(report["macro avg"]["f1-score"]),
        "roc_auc": roc_auc,
        "average_precision": average_precision,
        "sensitivity": sensitivity,
        "specificity": specificity,
        "balanced_accuracy": balanced,
        "threshold": t,
        "confusion_matrix": cm.astype(int).tolist(),
        "per_class": per_class,
        "n_images": int(y.size),
        "undefined": undefined,
    }


def _per_class(report: dict, cm: np.ndarray, undefined: dict[str, str]) -> dict[str, dict]:
    """Precision, recall, F1 and support of each class from ``classification_report``'s dict;
    notes in ``undefined`` a class never predicted or absent."""
    per_class = {}
    for label, name in enumerate(CLASSES):
        row = report[name]
        per_class[name] = {
            "precision": row["precision"],
            "recall": row["recall"],
            "f1": row["f1-score"],
            "support": int(row["support"]),
        }
        if cm[:, label].sum() == 0:
            undefined[f"precision_{name}"] = f"no image was predicted {name}; reported as 0.0"
        if cm[label].sum() == 0:
            undefined[f"recall_{name}"] = f"no {name} image in y_true; reported as 0.0"
    return per_class


# --- bootstrap -----------------------------------------------------------------------------------


def _rank_auc(y: np.ndarray, p: np.ndarray) -> float:
    """The area under the ROC curve as the Mann-Whitney statistic: the chance that a random
    PNEUMONIA image scores above a random NORMAL one, ties counting half (average ranks).

    The same number as ``sklearn.metrics.roc_auc_score`` (a test checks it to 1e-12), without
    the input validation that function repeats on every call, which was most of a bootstrap's
    time (``benchmarks/README.md``)."""
    values, inverse, counts = np.unique(p, return_inverse=True, return_counts=True)
    average_rank = np.cumsum(counts) - (counts - 1) / 2  # 1-based, ties share their mean
    positives = y == 1
    n_pos = int(positives.sum())
    n_neg = y.size - n_pos
    rank_sum = float(average_rank[inverse[positives]].sum())
    return (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def _resample_statistics(y: np.ndarray, p: np.ndarray, threshold: float) -> dict[str, float]:
    """The :data:`CI_KEYS` of one resample, from its confusion counts (NaN when undefined)."""
    pred = (p >= threshold).astype(np.int64)
    tn, fp, fn, tp = np.bincount(2 * y + pred, minlength=4).astype(np.float64)
    n_pos, n_neg, n = tp + fn, tn + fp, y.size
    f1_pos = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0
    f1_neg = 2 * tn / (2 * tn + fn + fp) if tn + fn + fp else 0.0
    both = n_pos > 0 and n_neg > 0
    return {
        "accuracy": (tp + tn) / n,
        "weighted_f1": (n_pos * f1_pos + n_neg * f1_neg) / n,
        "sensitivity": tp / n_pos if n_pos else np.nan,
        "specificity": tn / n_neg if n_neg else np.nan,
        "roc_auc": _rank_auc(y, p) if both else np.nan,
    }


def bootstrap_ci(
    y_true: Any,
    p_pneumonia: Any,
    threshold: float = 0.5,
    groups: Any = None,
    n_resamples: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, Any]:
    """Percentile bootstrap intervals for :data:`CI_KEYS`, resampling patients.

    ``groups`` gives each image's patient: a resample draws as many patients as there are,
    with replacement, and takes all images of each patient drawn. Without ``groups`` every
    image is its own patient (the plain bootstrap). Resampling patients keeps the images of
    one child together, as they are not independent, so the intervals come out wider and
    honest. All draws come from ``np.random.default_rng(seed)``: the same seed, the same
    intervals.

    Returns each metric as ``[lo, hi]`` (``None`` if no resample defines it), plus ``level``,
    ``n_resamples``, ``seed``, ``threshold``, ``n_patients`` and ``n_undefined``: per metric,
    the resamples left out because they lacked a class (reported, not dropped silently).
    """
    y, p = as_scores(y_true, p_pneumonia)
    t = _as_threshold(threshold)
    if int(n_resamples) < 1:
        raise ValueError(f"n_resamples must be at least 1, got {n_resamples}")
    if not 0.0 < float(level) < 1.0:
        raise ValueError(f"level must be strictly between 0 and 1, got {level}")
    patients = np.arange(y.size) if groups is None else np.asarray(groups)
    if patients.shape != y.shape:
        raise ValueError(f"groups has {patients.size} entries for {y.size} images")
    _, patient_of = np.unique(patients, return_inverse=True)
    order = np.argsort(patient_of, kind="stable")
    images_of = np.split(order, np.cumsum(np.bincount(patient_of))[:-1])
    rng = np.random.default_rng(seed)
    draws = {key: [] for key in CI_KEYS}
    for _ in range(int(n_resamples)):
        chosen = rng.integers(0, len(images_of), size=len(images_of))
        idx = np.concatenate([images_of[i] for i in chosen])
        for key, value in _resample_statistics(y[idx], p[idx], t).items():
            draws[key].append(value)
    q = [100 * (1 - level) / 2, 100 * (1 + level) / 2]
    result: dict[str, Any] = {}
    undefined = {}
    for key, values in draws.items():
        v = np.asarray(values)
        ok = v[~np.isnan(v)]
        result[key] = [float(x) for x in np.percentile(ok, q)] if ok.size else None
        undefined[key] = int(v.size - ok.size)
    result.update(
        level=float(level),
        n_resamples=int(n_resamples),
        seed=int(seed),
        threshold=t,
        n_patients=len(images_of),
        n_undefined=undefined,
    )
    return result


# --- thresholds ------------------------------------------------------------------------------------


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
    y, p = as_scores(y_true, p_pneumonia)
    if np.unique(y).size < 2:
        raise ValueError("youden_threshold needs both NORMAL and PNEUMONIA images in y_true")
    fpr, tpr, thresholds = roc_curve(y, p, drop_intermediate=False)
    best = int(np.argmax(tpr - fpr))  # thresholds decrease, so the first max is the highest
    if not np.isfinite(thresholds[best]):
        return float(np.nextafter(p.max(), np.inf))
    return float(thresholds[best])


def most_confident_mistakes(
    y_true: Any, p_pneumonia: Any, k: int, threshold: float = 0.5
) -> np.ndarray:
    """Indices of up to ``k`` wrong predictions, most confident in the wrong class first.

    Confidence in the wrong class is ``p`` for a NORMAL image called PNEUMONIA and ``1 - p``
    for a PNEUMONIA image called NORMAL. Ties keep index order.
    """
    y, p = as_scores(y_true, p_pneumonia)
    t = _as_threshold(threshold)
    if int(k) < 0:
        raise ValueError(f"k must be non-negative, got {k}")
    pred = (p >= t).astype(np.int64)
    wrong = np.flatnonzero(pred != y)
    confidence = np.where(y[wrong] == 0, p[wrong], 1.0 - p[wrong])
    order = np.argsort(-confidence, kind="stable")
    return wrong[order][: int(k)]
