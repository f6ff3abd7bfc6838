"""Scoring a trained run: predictions, the metrics of a split, and single image files.

:func:`evaluate_run` is what ``python -m helpers evaluate`` runs: it loads a run folder's
``best.pt``, scores one split of the run's data manifest without augmentation, chooses a
decision threshold on the VALIDATION split, and writes ``metrics-<split>.json`` and
``predictions-<split>.csv``. The
numbers come from :mod:`helpers.metrics`; notebook 05 computes the same ones with
scikit-learn in front of the reader, from the saved predictions.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from helpers.augment import normalize_batch
from helpers.cache import ImageCache
from helpers.config import CLASSES, Config
from helpers.data import DatasetError
from helpers.files import atomic_write_text
from helpers.images import ImageError
from helpers.inputcheck import model_input
from helpers.loader import BatchLoader, PreparedData, load_run_data
from helpers.metrics import CI_KEYS, bootstrap_ci, compute_metrics, youden_threshold
from helpers.recipe import pick_device
from helpers.runs import RunError, load_model_from_run
from helpers.sources import is_demo_folder

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
    "n_patients",
    "n_left_out",
    "left_out",
    "weights_used",
    "val_threshold",
    "tta",
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


# --- model outputs -------------------------------------------------------------------------------


def predict_proba(
    model: torch.nn.Module,
    batches: Iterable[Any],
    device: str | torch.device = "cpu",
    tta: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Run ``model`` over ``(x, y)`` batches; return ``(y_true, p_pneumonia)`` as numpy arrays.

    The model is switched to eval mode (dropout off, BatchNorm frozen) and run under
    ``torch.inference_mode()``, so the result is deterministic; its previous mode is restored
    afterwards. ``tta=True`` (test-time augmentation) averages the probabilities of each
    image and its horizontal mirror. Raises ``ValueError`` if the batches are empty or the
    model does not return ``(B, 2)`` logits.
    """
    was_training = model.training
    labels: list[np.ndarray] = []
    probs: list[np.ndarray] = []
    model.eval()
    try:
        with torch.inference_mode():
            for i, (x, y) in enumerate(batches):
                x = torch.as_tensor(x).to(device)
                logits = model(x)
                if logits.ndim != 2 or logits.shape[1] != len(CLASSES):
                    raise ValueError(
                        f"batch {i}: model returned shape {tuple(logits.shape)}, "
                        f"expected (B, {len(CLASSES)}) logits"
                    )
                p = torch.softmax(logits.float(), dim=1)[:, 1]
                if tta:
                    mirrored = model(torch.flip(x, dims=[-1]))
                    p = (p + torch.softmax(mirrored.float(), dim=1)[:, 1]) / 2
                y_arr = torch.as_tensor(y).reshape(-1).cpu().numpy().astype(np.int64)
                if y_arr.size != logits.shape[0]:
                    raise ValueError(f"batch {i}: {y_arr.size} labels for {logits.shape[0]} images")
                probs.append(p.cpu().numpy())
                labels.append(y_arr)
    finally:
        model.train(was_training)
    if not labels:
        raise ValueError("predict_proba: the batches were empty (no images to score)")
    return np.concatenate(labels), np.concatenate(probs).astype(np.float64)


def _score(
    model: torch.nn.Module,
    cache: ImageCache,
    indices: list[int],
    targets: list[int],
    config: Config,
    device: torch.device,
    tta: bool,
) -> tuple[np.ndarray, np.ndarray]:
    """``(y_true, p_pneumonia)`` for cache rows, in order: no augmentation, no shuffling."""
    loader = BatchLoader(
        cache, indices, targets, config.eval_batch_size,
        shuffle=False, augment=False, seed=config.seed, device=device,
    )  # fmt: skip
    return predict_proba(model, loader, device, tta=tta)


# --- evaluating a run folder ------------------------------------------------------------------------


def _decodable_rows(
    data: PreparedData, split: str
) -> tuple[list[int], list[int], list[dict[str, str]]]:
    """Cache rows and targets of the images to score, and those left out (``path``,
    ``reason``), which a warning counts."""
    indices, targets = data.rows(split)
    left_out = data.left_out(split)
    if left_out:
        warnings.warn(
            f"{len(left_out)} of {len(data.splits[split])} {split} images could not be decoded "
            f"and are left out (e.g. {left_out[0]['path']}: {left_out[0]['reason']}); "
            "metrics-*.json lists them",
            stacklevel=3,
        )
    if not indices:
        raise DatasetError(f"{data.location.root}: none of the {split} images could be decoded")
    return indices, targets, left_out


def _validation_data(
    run_dir: Path, config: Config, data_dir: str | Path | None, progress: bool
) -> tuple[PreparedData | None, str]:
    """The run's validation split, from ``data_dir`` if given and holding it, else from where
    the run found it; or None and why neither is usable."""
    reasons = []
    for where in dict.fromkeys([data_dir, None]):  # data_dir first, then the recorded paths
        try:
            return load_run_data(run_dir, config, where, ["val"], progress), ""
        except DatasetError as err:  # a missing or changed file, a folder without val/
            reasons.append(str(err))
    return None, "; ".join(reasons)


def _validation_threshold(
    model: torch.nn.Module,
    val: PreparedData | None,
    unreachable: str,
    config: Config,
    device: torch.device,
    tta: bool,
    scores: tuple[np.ndarray, np.ndarray] | None = None,
) -> tuple[float, str]:
    """Youden's J threshold on the run's validation split, or 0.5 and the reason why not.
    ``scores``: the split's targets and probabilities when the caller has them already."""
    if val is None:
        return HEADLINE_THRESHOLD, f"fallback 0.5: validation images not usable ({unreachable})"
    indices, targets = val.rows("val")
    root = val.location.root
    if len(set(targets)) < 2:  # Youden's J needs both classes
        return HEADLINE_THRESHOLD, (
            f"fallback 0.5: the validation split of {root} has "
            f"{'no images' if not targets else 'one class only'} that could be decoded"
        )
    y_val, p_val = scores or _score(model, val.cache, indices, targets, config, device, tta)
    source = f"Youden's J on the validation split ({len(indices)} images of {root})"
    return youden_threshold(y_val, p_val), source


def split_metrics(
    y: np.ndarray,
    p: np.ndarray,
    patients: Sequence[str],
    val_threshold: float,
    n_resamples: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """The metrics of one set of predictions: at 0.5 (the headline), with patient-cluster
    bootstrap intervals for :data:`helpers.metrics.CI_KEYS`, and at ``val_threshold``."""
    headline = compute_metrics(y, p, HEADLINE_THRESHOLD)
    at_val = compute_metrics(y, p, val_threshold)
    ci = bootstrap_ci(y, p, HEADLINE_THRESHOLD, groups=patients, n_resamples=n_resamples, seed=seed)
    metrics = {key: headline[key] for key in RUN_METRIC_KEYS if key in headline}
    metrics["ci95"] = {key: ci[key] for key in CI_KEYS}
    metrics["n_patients"] = ci["n_patients"]
    metrics["val_threshold"] = {
        "threshold": val_threshold,
        **{key: at_val[key] for key in VAL_THRESHOLD_KEYS[2:]},
    }
    return metrics


def evaluate_run(
    run_dir: str | Path,
    data_dir: str | Path | None = None,
    split: str = "test",
    device: str | None = None,
    n_resamples: int = 1000,
    progress: bool = True,
    tta: bool = False,
) -> dict[str, Any]:
    """Score a run folder's ``best.pt`` on one split; write ``metrics-<name>.json`` and
    ``predictions-<name>.csv`` (``<name>`` = the split, ``-tta`` appended with ``tta``: each
    image averaged with its mirror image) into the run folder and return the metrics.

    Data: the images the run's manifest lists for ``split`` (``manifest.csv``, written when
    it trained; nothing is found or split again), at their recorded paths, or under
    ``data_dir`` when the dataset has moved (matched by relative path; it may hold only
    ``test/``). Every file is checked against its recorded hash: a missing or changed image
    raises :class:`DatasetError` naming it. Images are scored through the cache, without
    augmentation; images that fail to decode are left out with a warning, and counted and
    named in the metrics (``n_left_out``, ``left_out``).

    The headline numbers use the article's argmax rule (0.5). A second threshold, Youden's J,
    is chosen on the run's VALIDATION split, never on the evaluated split (unless that is
    ``val``, which ``source`` then says); without those images it falls back to 0.5, saying
    why (and warning). Keys: :data:`RUN_METRIC_KEYS` (``ci95``: patient-cluster bootstrap
    intervals, ``n_resamples`` resamples seeded with the run's seed; ``is_demo``: synthetic
    data). Predictions: ``path``, ``patient``, ``target`` (0/1), ``p_pneumonia`` and
    ``test_half`` (``choose``/``report`` on the test split), one row per image scored.
    Raises :class:`RunError` without ``best.pt``, :class:`DatasetError` without data.
    """
    if split not in EVAL_SPLITS:
        raise ValueError(f"split must be one of {EVAL_SPLITS}, got {split!r}")
    run_dir = Path(run_dir)
    if not (run_dir / "best.pt").is_file():
        raise RunError(
            f"{run_dir / 'best.pt'}: no such checkpoint (is {run_dir} a run folder that trained?)"
        )
    dev = pick_device(device)
    model, config, state = load_model_from_run(run_dir, "best.pt", device=dev)
    try:
        data = load_run_data(run_dir, config, data_dir, [split], progress)
    except DatasetError as err:
        raise DatasetError(f"cannot evaluate {run_dir}: {err}") from err
    root = data.location.root
    indices, targets, left_out = _decodable_rows(data, split)
    y, p = _score(model, data.cache, indices, targets, config, dev, tta)
    if split == "val":  # the threshold from the scores just computed, not a second pass
        threshold, source = _validation_threshold(model, data, "", config, dev, tta, (y, p))
        source += "; chosen on the evaluated split itself, so its numbers there are optimistic"
    else:
        val, unreachable = _validation_data(run_dir, config, data_dir, progress)
        threshold, source = _validation_threshold(model, val, unreachable, config, dev, tta)
    if source.startswith("fallback"):
        warnings.warn(f"{run_dir}: second threshold {source}", stacklevel=2)

    scored = data.splits[split].set_index("path").loc[[data.cache.paths[i] for i in indices]]
    metrics = split_metrics(y, p, scored["patient"].tolist(), threshold, n_resamples, config.seed)
    metrics["val_threshold"]["source"] = source
    metrics["val_threshold"] = {key: metrics["val_threshold"][key] for key in VAL_THRESHOLD_KEYS}
    metrics.update(
        n_left_out=len(left_out),
        left_out=left_out,
        weights_used=state.get("weights_used", "unknown"),
        tta=tta,
        split=split,
        data_root=str(root),
        is_demo=is_demo_folder(root),
    )
    metrics = {key: metrics[key] for key in RUN_METRIC_KEYS}
    name = split + ("-tta" if tta else "")
    predictions = pd.DataFrame(
        {
            "path": scored.index,
            "patient": scored["patient"].to_numpy(),
            "target": y,
            "p_pneumonia": p,
            "test_half": scored["test_half"].to_numpy(),
        }
    )
    atomic_write_text(run_dir / f"predictions-{name}.csv", predictions.to_csv(index=False))
    atomic_write_text(run_dir / f"metrics-{name}.json", json.dumps(metrics, indent=2))
    return metrics


# --- single images --------------------------------------------------------------------------


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
    intensity: str = "none",
    crop_border: bool = False,
) -> list[ImagePrediction]:
    """P(pneumonia) for image files, one :class:`ImagePrediction` per path, in order.

    Each file is decoded with :func:`load_gray` at ``image_size`` (with the run's ``intensity``
    normalisation) and normalised with
    :func:`normalize_batch`: the very steps of the evaluation cache and loader, so a file
    gets the probability :func:`evaluate_run` gives it (up to float rounding between batch
    sizes). ``crop_border=True`` first crops a uniform frame (a light box, a monitor) from a
    picture that has one (:func:`helpers.inputcheck.model_input`). A file that cannot be used
    (missing, empty, corrupt, a directory) gets ``error`` with the reason instead; the others
    are still scored.
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
                arrays.append(model_input(path, image_size, intensity, crop_border)[0])
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
