"""Every run scored on the official test split, in one table: ``docs/results.md``.

``python -m helpers results RUN [RUN ...] --out docs/results.md`` reads each evaluated run
folder (``config.json``, ``history.csv``, ``metrics-test[-tta].json`` and
``predictions-test[-tta].csv`` written by ``python -m helpers train`` and ``evaluate``) and
writes one row per run and scoring: its recipe, seed, epochs, wall time, the command that
trained it, and its metrics on

* the full official test split (624 images on the real data),
* the ``choose`` half (patient-grouped, :func:`helpers.data.test_halves`; the halves recorded in
  the run's predictions, from its data manifest): the only test images any choice may look at,
* the ``report`` half: the numbers to quote (what it has been exposed to is said in
  ``docs/results.md``),

each at the article's 0.5 threshold, at the threshold chosen on the run's validation split, and
at the threshold chosen on the choose half (Youden's J), with patient-cluster bootstrap
intervals. A validation threshold that fell back to 0.5 (the run's validation images were not
usable when it was evaluated) is shown as "n/a (fallback)", not as a threshold; the full split
at the choose-half threshold is labelled optimistic, since that threshold was fitted on half
of its images. Nothing is left out: a run that is worse is reported like the others.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from helpers.config import SCRATCH_RECIPE, Config
from helpers.data import halves_rule, test_halves
from helpers.evaluate import HEADLINE_THRESHOLD
from helpers.metrics import bootstrap_ci, compute_metrics, youden_threshold
from helpers.runs import RunError, read_history, read_run_config

CLI_FLAGS: dict[str, str] = {
    "image_size": "--image-size",
    "pretrained": "--pretrained",
    "seed": "--seed",
    "augment": "--augment",
    "intensity": "--intensity",
    "label_smoothing": "--label-smoothing",
    "ema_decay": "--ema-decay",
    "patience": "--patience",
    "epochs": "--epochs",
    "batch_size": "--batch-size",
}
"""Config fields the ``train`` command line can set, and their flags."""

RULES = ("0.5", "validation", "choose half")
"""The three threshold rules every row is scored at."""

FALLBACK = "n/a (fallback)"
"""How a validation threshold that fell back to 0.5 is shown: no threshold was chosen."""

OPTIMISTIC = "optimistic: threshold fitted on half of these images"
"""The label of the full split scored at the choose-half threshold."""


@dataclass
class RunScore:
    """One run's scores on the test split (a row of the results table)."""

    name: str
    recipe: str
    seed: int
    tta: bool
    epochs: int
    best_epoch: int
    wall_s: float
    command: str
    thresholds: dict[str, float | None]  # None: the validation rule fell back to 0.5
    subsets: dict[str, dict[str, dict[str, Any]]]  # subset -> rule -> metrics
    halves: str = ""  # where the halves came from


def train_command(config: dict[str, Any], run_name: str, data: str) -> str:
    """The ``train`` command that reproduces a run: the weights, size, seed and augmentation
    always (the default augmentation depends on the weights), every other flag whose value is
    not the article's."""
    default = Config().to_dict()
    always = {"pretrained", "image_size", "seed", "augment", *SCRATCH_RECIPE}
    flags = [f"--data {data}", f"--out outputs/runs/{run_name}"]
    for field, flag in CLI_FLAGS.items():
        if field in always or config.get(field) != default[field]:
            flags.append(f"{flag} {config[field]}")
    return "python -m helpers train " + " ".join(flags)


def recorded_recipe(record: dict[str, Any]) -> dict[str, Any]:
    """A run's recipe as ``config.json`` recorded it, with today's defaults for fields it lacks.

    Not validated (:class:`helpers.config.Config` would be): a run trained with an option that
    has since been removed (``intensity clahe``) can still be tabulated from its files."""
    return {**Config().to_dict(), **record["config"]}


def recipe_name(config: dict[str, Any]) -> str:
    """A short description of what differs from the default recipe, e.g. ``128 px, clahe``."""
    default = Config().to_dict()
    parts = [f"{config['image_size']} px", f"weights {config['pretrained']}"]
    for field in ("augment", "intensity", "label_smoothing", "ema_decay", "patience"):
        if config.get(field) != default[field] or field == "augment":
            parts.append(f"{field} {config[field]}")
    return ", ".join(parts)


def _scores(y, p, patients, threshold: float, seed: int, n_resamples: int) -> dict[str, Any]:
    """Point metrics at ``threshold`` and patient-bootstrap intervals of the main ones."""
    point = compute_metrics(y, p, threshold)
    ci = bootstrap_ci(y, p, threshold, groups=patients, n_resamples=n_resamples, seed=seed)
    keys = ("accuracy", "weighted_f1", "sensitivity", "specificity", "roc_auc")
    return {key: point[key] for key in keys} | {
        "threshold": threshold,
        "ci95": {k: ci[k] for k in keys},
    }


def score_run(
    run_dir: str | Path, data_label: str, tta: bool = False, n_resamples: int = 1000
) -> RunScore:
    """Score one evaluated run on the full test split and on its two halves (``data_label``:
    the data folder to name in the reproducing command).

    The halves are those of the run's predictions (``test_half``, from its data manifest);
    predictions written before they carried it are cut by :func:`helpers.data.test_halves`
    (the pinned halves for the official test split)."""
    run_dir = Path(run_dir)
    name = "test-tta" if tta else "test"
    predictions_path = run_dir / f"predictions-{name}.csv"
    metrics_path = run_dir / f"metrics-{name}.json"
    if not predictions_path.is_file() or not metrics_path.is_file():
        flag = " --tta" if tta else ""
        raise RunError(
            f"{run_dir}: not evaluated on test (run `python -m helpers evaluate --run {run_dir}{flag}`)"
        )
    predictions = pd.read_csv(predictions_path, keep_default_na=False)
    metrics = json.loads(metrics_path.read_text())
    config = recorded_recipe(read_run_config(run_dir))
    history = read_history(run_dir)
    if "test_half" in predictions and set(predictions["test_half"]) == {"choose", "report"}:
        halves = {h: predictions[predictions["test_half"] == h] for h in ("choose", "report")}
        where = "the run's data manifest"
    else:
        halves = test_halves(predictions)
        where = f"{halves_rule(predictions)} by helpers.data.test_halves"
    val = metrics["val_threshold"]
    fell_back = val["source"].startswith("fallback")
    thresholds: dict[str, float | None] = {
        "0.5": HEADLINE_THRESHOLD,
        "validation": None if fell_back else val["threshold"],
        "choose half": youden_threshold(
            halves["choose"]["target"], halves["choose"]["p_pneumonia"]
        ),
    }
    subsets = {}
    for subset, table in (("full", predictions), *halves.items()):
        y, p, patients = (
            table["target"].to_numpy(),
            table["p_pneumonia"].to_numpy(),
            table["patient"].to_numpy(),
        )
        subsets[subset] = {}
        for rule, t in thresholds.items():
            scored = None if t is None else _scores(y, p, patients, t, config["seed"], n_resamples)
            subsets[subset][rule] = scored
    return RunScore(
        name=run_dir.name,
        recipe=recipe_name(config),
        seed=config["seed"],
        tta=tta,
        epochs=len(history),
        best_epoch=int(history.loc[history["val_loss"].idxmin(), "epoch"]),
        wall_s=float(history["seconds"].sum()),
        command=train_command(config, run_dir.name, data_label),
        thresholds=thresholds,
        subsets=subsets,
        halves=where,
    )


def _cell(metrics: dict[str, Any], key: str) -> str:
    """``0.862 (0.832-0.891)``: a value and its 95% interval."""
    value, ci = metrics[key], metrics["ci95"][key]
    if value is None:
        return "n/a"
    return f"{value:.3f} ({ci[0]:.3f}-{ci[1]:.3f})" if ci else f"{value:.3f}"


def summary_table(scores: list[RunScore], subset: str, rule: str) -> str:
    """One line per run: the five headline metrics on ``subset`` at threshold ``rule``."""
    lines = [
        "| run | recipe | seed | scoring | threshold | accuracy | weighted F1 | sensitivity | specificity | AUROC |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for s in scores:
        scoring = "flip TTA" if s.tta else "plain"
        start = f"| `{s.name}` | {s.recipe} | {s.seed} | {scoring} | "
        lines.append(start + " | ".join(_row_cells(s.subsets[subset][rule])) + " |")
    return "\n".join(lines)


METRIC_COLUMNS = ("accuracy", "weighted_f1", "sensitivity", "specificity", "roc_auc")


def _row_cells(m: dict[str, Any] | None) -> list[str]:
    """The threshold and the five metrics of a row; "n/a (fallback)" where no threshold was
    chosen (the validation rule fell back to 0.5)."""
    if m is None:
        return [FALLBACK] + ["n/a"] * len(METRIC_COLUMNS)
    return [f"{m['threshold']:.3f}"] + [_cell(m, k) for k in METRIC_COLUMNS]


def run_section(s: RunScore) -> str:
    """Everything measured for one run: command, epochs, time, 3 subsets x 3 threshold rules."""
    scoring = "each image averaged with its mirror image (flip TTA)" if s.tta else "plain"
    lines = [
        f"### `{s.name}`{' (TTA)' if s.tta else ''}",
        "",
        f"{s.recipe}; seed {s.seed}; {s.epochs} epochs (best {s.best_epoch}), "
        f"{s.wall_s / 60:.0f} min of training; scoring: {scoring}.",
        "",
        f"`{s.command}`",
        "",
        "| test images | threshold rule | threshold | accuracy | weighted F1 | sensitivity | specificity | AUROC |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for subset, by_rule in s.subsets.items():
        for rule, m in by_rule.items():
            label = f"{rule} ({OPTIMISTIC})" if subset == "full" and rule == "choose half" else rule
            lines.append(f"| {subset} | {label} | " + " | ".join(_row_cells(m)) + " |")
    lines += ["", f"Test halves: {s.halves}."] if s.halves else []
    return "\n".join(lines)


START, END = "<!-- results:start -->", "<!-- results:end -->"


def write_results(scores: list[RunScore], path: str | Path) -> None:
    """Replace the generated part of ``path`` (between :data:`START` and :data:`END`)."""
    from helpers.files import atomic_write_text

    path = Path(path)
    text = path.read_text() if path.is_file() else f"{START}\n{END}\n"
    if START not in text or END not in text:
        raise ValueError(f"{path}: no {START} ... {END} markers to write between")
    body = [
        "## Summary: the choose half at 0.5 (what choices were made on)",
        "",
        summary_table(scores, "choose", "0.5"),
        "",
        "## Summary: the report half (lightly exposed: no setting was chosen from its numbers)",
        "",
        "At 0.5:",
        "",
        summary_table(scores, "report", "0.5"),
        "",
        "At the threshold chosen on the choose half:",
        "",
        summary_table(scores, "report", "choose half"),
        "",
        "## Summary: the full official test split at 0.5",
        "",
        summary_table(scores, "full", "0.5"),
        "",
        "## Every run",
        "",
        *[run_section(s) + "\n" for s in scores],
    ]
    head, rest = text.split(START, 1)
    tail = rest.split(END, 1)[1]
    atomic_write_text(path, head + START + "\n" + "\n".join(body) + "\n" + END + tail)
