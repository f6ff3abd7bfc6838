"""helpers.metrics (checked against hand arithmetic and scikit-learn: point metrics, the
patient-cluster bootstrap, thresholds) and helpers.evaluate.predict_proba."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from sklearn.metrics import accuracy_score, f1_score, recall_score, roc_auc_score

from helpers.evaluate import predict_proba
from helpers.metrics import (
    METRIC_KEYS,
    _resample_statistics,
    bootstrap_ci,
    compute_metrics,
    most_confident_mistakes,
    youden_threshold,
)

# A fixed example worked out by hand (threshold 0.5, predicted PNEUMONIA when p >= 0.5):
#   NORMAL    p = 0.1 0.2 0.3 | 0.7          -> TN = 3, FP = 1
#   PNEUMONIA p = 0.5 0.6 0.9 0.95 | 0.2 0.4 -> TP = 4 (0.5 counts: p >= t), FN = 2
Y_HAND = np.array([0, 0, 0, 0, 1, 1, 1, 1, 1, 1])
P_HAND = np.array([0.1, 0.2, 0.3, 0.7, 0.5, 0.6, 0.9, 0.95, 0.2, 0.4])
TN, FP, FN, TP = 3, 1, 2, 4


def test_metrics_match_hand_arithmetic() -> None:
    m = compute_metrics(Y_HAND, P_HAND, threshold=0.5)
    assert m["confusion_matrix"] == [[TN, FP], [FN, TP]]
    assert m["accuracy"] == pytest.approx(7 / 10)
    assert m["sensitivity"] == pytest.approx(4 / 6)
    assert m["specificity"] == pytest.approx(3 / 4)
    assert m["balanced_accuracy"] == pytest.approx((3 / 4 + 4 / 6) / 2)
    normal, pneumonia = m["per_class"]["NORMAL"], m["per_class"]["PNEUMONIA"]
    assert normal["precision"] == pytest.approx(3 / 5)  # TN / (TN + FN)
    assert normal["recall"] == pytest.approx(3 / 4)
    assert normal["f1"] == pytest.approx(2 / 3)  # 2*3 / (2*3 + 1 + 2)
    assert normal["support"] == 4
    assert pneumonia["precision"] == pytest.approx(4 / 5)
    assert pneumonia["recall"] == pytest.approx(4 / 6)
    assert pneumonia["f1"] == pytest.approx(8 / 11)  # 2*4 / (2*4 + 1 + 2)
    assert pneumonia["support"] == 6
    assert m["weighted_f1"] == pytest.approx((4 * 2 / 3 + 6 * 8 / 11) / 10)
    assert m["macro_f1"] == pytest.approx((2 / 3 + 8 / 11) / 2)
    # AUROC by counting the 6 x 4 (PNEUMONIA, NORMAL) pairs: a win counts 1, a tie 1/2.
    # 0.5 beats 0.1 0.2 0.3 -> 3; 0.6 -> 3; 0.9 -> 4; 0.95 -> 4; 0.2 beats 0.1, ties 0.2 -> 1.5;
    # 0.4 -> 3. Total 18.5 of 24.
    assert m["roc_auc"] == pytest.approx(18.5 / 24)
    assert m["n_images"] == 10
    assert m["threshold"] == 0.5
    assert m["undefined"] == {}


def test_metrics_keys_and_json() -> None:
    m = compute_metrics(Y_HAND, P_HAND)
    assert tuple(m) == METRIC_KEYS
    assert json.loads(json.dumps(m)) == m  # plain Python types only
    assert isinstance(m["confusion_matrix"][0][0], int)
    assert isinstance(m["accuracy"], float)


def test_threshold_changes_predictions() -> None:
    # At 0.65 the PNEUMONIA images at 0.5 and 0.6 become false negatives: TP 2, FN 4.
    m = compute_metrics(Y_HAND, P_HAND, threshold=0.65)
    assert m["confusion_matrix"] == [[3, 1], [4, 2]]
    assert m["sensitivity"] == pytest.approx(2 / 6)


def test_auroc_and_average_precision_tiny_example() -> None:
    y = np.array([0, 0, 1, 1])
    p = np.array([0.1, 0.4, 0.35, 0.8])
    m = compute_metrics(y, p)
    # Pairs (pos, neg): 0.35>0.1 yes, 0.35>0.4 no, 0.8 beats both -> 3 of 4.
    assert m["roc_auc"] == pytest.approx(3 / 4)
    # Ranked: 0.8 (pos, precision 1, recall 1/2), 0.4 (neg), 0.35 (pos, precision 2/3,
    # recall 1) -> AP = 1/2 * 1 + 1/2 * 2/3.
    assert m["average_precision"] == pytest.approx(0.5 + 0.5 * 2 / 3)


def test_metrics_agree_with_sklearn_on_random_data() -> None:
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 500)
    p = np.clip(0.3 * y + 0.7 * rng.random(500), 0, 1)
    m = compute_metrics(y, p, threshold=0.4)
    pred = p >= 0.4
    assert m["weighted_f1"] == pytest.approx(f1_score(y, pred, average="weighted"))
    assert m["macro_f1"] == pytest.approx(f1_score(y, pred, average="macro"))
    assert m["roc_auc"] == pytest.approx(roc_auc_score(y, p))


def test_single_class_is_reported_not_crashing() -> None:
    m = compute_metrics([1, 1, 1], [0.9, 0.2, 0.6])
    assert m["roc_auc"] is None and m["average_precision"] is None
    assert "roc_auc" in m["undefined"] and "one class" in m["undefined"]["roc_auc"]
    assert m["specificity"] is None and m["balanced_accuracy"] is None
    assert m["sensitivity"] == pytest.approx(2 / 3)
    assert m["accuracy"] == pytest.approx(2 / 3)
    json.dumps(m)


@pytest.mark.parametrize(
    ("y", "p", "message"),
    [
        ([], [], "empty"),
        ([0, 1], [0.5], "differ in length"),
        ([0, 2], [0.5, 0.5], "only 0"),
        ([0, 1], [0.5, 1.7], "probabilities"),
        ([0, 1], [0.5, np.nan], "NaN"),
    ],
)
def test_bad_input_raises(y: list, p: list, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        compute_metrics(y, p)


def test_most_confident_mistakes() -> None:
    # Mistakes: index 3 (NORMAL, p 0.7 -> 0.7 sure), 8 (PNEUMONIA, p 0.2 -> 0.8 sure),
    # 9 (PNEUMONIA, p 0.4 -> 0.6 sure).
    assert most_confident_mistakes(Y_HAND, P_HAND, k=5).tolist() == [8, 3, 9]
    assert most_confident_mistakes(Y_HAND, P_HAND, k=2).tolist() == [8, 3]
    assert most_confident_mistakes(Y_HAND, P_HAND, k=0).tolist() == []


# --- bootstrap -----------------------------------------------------------------------------


def _fake_scores(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Labels (about 62% PNEUMONIA, like the test split) and informative, tied scores."""
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.625).astype(int)
    p = np.round(np.clip(0.35 * y + 0.65 * rng.random(n), 0, 1), 2)  # 2 decimals: many ties
    return y, p


def test_bootstrap_same_seed_same_interval_other_seed_differs() -> None:
    y, p = _fake_scores(300, 0)
    a = bootstrap_ci(y, p, n_resamples=400, seed=7)
    b = bootstrap_ci(y, p, n_resamples=400, seed=7)
    c = bootstrap_ci(y, p, n_resamples=400, seed=8)
    assert a == b
    assert a["roc_auc"] != c["roc_auc"] or a["weighted_f1"] != c["weighted_f1"]


def test_bootstrap_contains_point_estimate_and_shrinks_with_n() -> None:
    keys = ("accuracy", "weighted_f1", "sensitivity", "specificity", "roc_auc")
    widths = {}
    for n in (100, 2000):
        y, p = _fake_scores(n, 1)
        point = compute_metrics(y, p)
        ci = bootstrap_ci(y, p, n_resamples=300, seed=0)
        for key in keys:
            lo, hi = ci[key]
            assert lo <= point[key] <= hi, (n, key, ci[key], point[key])
        widths[n] = {key: ci[key][1] - ci[key][0] for key in keys}
        assert ci["n_undefined"]["roc_auc"] == 0 and ci["n_patients"] == n
    for key in keys:
        assert widths[2000][key] < widths[100][key] / 2  # ~ 1/sqrt(20) in theory


def test_resample_statistics_match_sklearn() -> None:
    y, p = _fake_scores(150, 2)
    rng = np.random.default_rng(11)
    for _ in range(5):
        idx = rng.integers(0, y.size, size=y.size)
        yy, pp = y[idx], p[idx]
        stats = _resample_statistics(yy, pp, 0.5)
        pred = pp >= 0.5
        assert stats["roc_auc"] == pytest.approx(roc_auc_score(yy, pp), abs=1e-12)
        assert stats["accuracy"] == pytest.approx(accuracy_score(yy, pred), abs=1e-12)
        assert stats["weighted_f1"] == pytest.approx(
            f1_score(yy, pred, average="weighted"), abs=1e-12
        )
        assert stats["sensitivity"] == pytest.approx(recall_score(yy, pred, pos_label=1))
        assert stats["specificity"] == pytest.approx(recall_score(yy, pred, pos_label=0))


def test_cluster_bootstrap_keeps_a_patients_images_together() -> None:
    """Five images per patient, nearly identical within a patient: resampling images treats
    them as five independent cases, resampling patients as one. The patient bootstrap is
    therefore wider (about sqrt(5) times here), and honest."""
    rng = np.random.default_rng(5)
    n_patients = 120
    y_patient = (rng.random(n_patients) < 0.6).astype(int)
    p_patient = np.clip(0.3 * y_patient + 0.7 * rng.random(n_patients), 0, 1)
    y = np.repeat(y_patient, 5)
    p = np.clip(np.repeat(p_patient, 5) + rng.normal(0, 0.01, 5 * n_patients), 0, 1)
    groups = np.repeat([f"patient{i}" for i in range(n_patients)], 5)
    by_image = bootstrap_ci(y, p, n_resamples=400, seed=0)
    by_patient = bootstrap_ci(y, p, groups=groups, n_resamples=400, seed=0)
    assert by_patient["n_patients"] == n_patients and by_image["n_patients"] == 5 * n_patients
    for key in ("accuracy", "sensitivity", "specificity", "roc_auc"):
        wide = by_patient[key][1] - by_patient[key][0]
        narrow = by_image[key][1] - by_image[key][0]
        assert wide > 1.6 * narrow, key
    with pytest.raises(ValueError, match="groups"):
        bootstrap_ci(y, p, groups=groups[:10])


def test_bootstrap_reports_resamples_without_a_class() -> None:
    # With 1 NORMAL among 4 images, a resample misses it with chance (3/4)^4 ~ 32%.
    ci = bootstrap_ci([0, 1, 1, 1], [0.2, 0.6, 0.7, 0.1], n_resamples=300, seed=0)
    assert 50 < ci["n_undefined"]["roc_auc"] < 150
    assert ci["n_undefined"]["specificity"] == ci["n_undefined"]["roc_auc"]
    assert ci["roc_auc"] is not None
    only_one = bootstrap_ci([1, 1, 1], [0.2, 0.6, 0.7], n_resamples=50)
    assert only_one["roc_auc"] is None and only_one["n_undefined"]["roc_auc"] == 50


# --- thresholds -------------------------------------------------------------


def test_youden_threshold_on_constructed_example() -> None:
    # NORMAL 0.1 0.2 0.3 0.6 0.75, PNEUMONIA 0.4 0.5 0.7 0.8 0.9. By hand, J = TPR - FPR:
    # t=0.9: .2-0 | 0.8: .4-0 | 0.75: .4-.2 | 0.7: .6-.2 | 0.6: .6-.4 | 0.5: .8-.4 |
    # t=0.4: 1-.4 = .6 (the unique best) | 0.3: 1-.6
    y = np.array([0, 0, 0, 0, 0, 1, 1, 1, 1, 1])
    p = np.array([0.1, 0.2, 0.3, 0.6, 0.75, 0.4, 0.5, 0.7, 0.8, 0.9])
    t = youden_threshold(y, p)
    assert t == pytest.approx(0.4)
    m = compute_metrics(y, p, threshold=t)
    assert m["sensitivity"] + m["specificity"] - 1 == pytest.approx(0.6)
    with pytest.raises(ValueError, match="both"):
        youden_threshold([1, 1], [0.2, 0.3])


# --- model outputs -------------------------------------------------------------------------


def test_predict_proba_gathers_softmax_and_restores_mode() -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 2), torch.nn.Dropout(0.5))
    model.train()
    x = torch.randn(10, 3, 2, 2)
    y = torch.tensor([0, 1, 1, 0, 1, 0, 0, 1, 1, 1])
    batches = [(x[:4], y[:4]), (x[4:], y[4:])]
    labels, probs = predict_proba(model, batches)
    assert model.training  # mode restored
    with torch.no_grad():
        expected = torch.softmax(model[1](x.flatten(1)), dim=1)[:, 1].numpy()
    np.testing.assert_allclose(probs, expected, rtol=1e-6)
    assert labels.tolist() == y.tolist()
    labels2, probs2 = predict_proba(model, batches)
    np.testing.assert_array_equal(probs, probs2)  # dropout off: deterministic
    with pytest.raises(ValueError, match="empty"):
        predict_proba(model, [])
    with pytest.raises(ValueError, match="expected"):
        predict_proba(torch.nn.Flatten(), batches)
