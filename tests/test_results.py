"""docs/results.md: every evaluated run scored on the test split and its two halves."""

from __future__ import annotations

import json
from pathlib import Path
from shutil import copytree

import pandas as pd
import pytest

from helpers import cli
from helpers.config import Config
from helpers.data import test_halves as halves_of
from helpers.evaluate import evaluate_run
from helpers.results import (
    END,
    RULES,
    START,
    run_section,
    score_run,
    train_command,
    write_results,
)
from helpers.runs import RunError


@pytest.fixture(scope="module")
def evaluated(made_run, session_outputs, tmp_path_factory):
    run = copytree(made_run.run_dir, tmp_path_factory.mktemp("results") / "quick-s42")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PNEUMONIA_OUTPUTS", str(session_outputs))
        evaluate_run(run, progress=False, n_resamples=100)
    return run


def test_a_run_is_scored_on_the_full_split_and_both_halves(evaluated):
    score = score_run(evaluated, "DATA", n_resamples=100)
    full, choose, report = (score.subsets[k] for k in ("full", "choose", "report"))
    assert set(score.subsets) == {"full", "choose", "report"} and set(full) == set(RULES)
    assert score.thresholds["0.5"] == 0.5
    assert score.thresholds["validation"] != score.thresholds["choose half"]
    for rule, threshold in score.thresholds.items():
        for subset in (full, choose, report):
            m = subset[rule]
            assert m["threshold"] == threshold
            lo, hi = m["ci95"]["accuracy"]
            assert lo <= m["accuracy"] <= hi
    # The full split's accuracy is the image-weighted mean of the halves' accuracies.
    predictions = pd.read_csv(evaluated / "predictions-test.csv")
    sizes = predictions["test_half"].value_counts()
    mixed = (
        choose["0.5"]["accuracy"] * sizes["choose"] + report["0.5"]["accuracy"] * sizes["report"]
    )
    assert full["0.5"]["accuracy"] == pytest.approx(mixed / len(predictions))
    assert score.epochs == 1 and score.seed == 42 and not score.tta
    # The halves are the run's (its manifest's), which test_halves reproduces.
    assert score.halves == "the run's data manifest"
    recomputed = halves_of(predictions)
    assert set(recomputed["choose"]["path"]) == set(
        predictions.query("test_half == 'choose'")["path"]
    )


def test_a_fallback_threshold_and_an_optimistic_row_are_marked(evaluated, tmp_path):
    """A validation threshold that fell back to 0.5 is no threshold: "n/a (fallback)", not
    0.500; the full split at the choose-half threshold is labelled optimistic."""
    run = copytree(evaluated, tmp_path / "fell-back")
    metrics = json.loads((run / "metrics-test.json").read_text())
    metrics["val_threshold"].update(threshold=0.5, source="fallback 0.5: validation images gone")
    (run / "metrics-test.json").write_text(json.dumps(metrics))
    fell_back = score_run(run, "DATA", n_resamples=20)
    assert fell_back.thresholds["validation"] is None
    assert all(by_rule["validation"] is None for by_rule in fell_back.subsets.values())
    section = run_section(fell_back)
    assert section.count("| validation | n/a (fallback) |") == 3
    assert "| full | choose half (optimistic: threshold fitted on half of these images) |" in (
        section
    )
    normal = run_section(score_run(evaluated, "DATA", n_resamples=20))
    assert "n/a (fallback)" not in normal and "| full | validation | 0." in normal


def test_the_command_reproduces_the_recipe():
    config = Config().for_weights("none").replace(image_size=128, augment="article", ema_decay=0.99)
    command = train_command(config.to_dict(), "run-a", "DATA")
    assert command.startswith("python -m helpers train --data DATA --out outputs/runs/run-a")
    for flag in (
        "--image-size 128",
        "--pretrained none",
        "--seed 42",
        "--augment article",
        "--ema-decay 0.99",
    ):
        assert flag in command
    assert "--patience" not in command  # defaults are left out


def test_results_are_written_between_the_markers(evaluated, tmp_path, capsys):
    doc = tmp_path / "results.md"
    doc.write_text(f"# Results\n\nkept by hand\n\n{START}\nold\n{END}\n\nkept too\n")
    argv = ["results", str(evaluated), "--out", str(doc), "--data-label", "DATA"]
    assert cli.main([*argv, "--resamples", "50"]) == 0
    text = doc.read_text()
    assert "kept by hand" in text and "kept too" in text and "\nold\n" not in text
    assert f"`{evaluated.name}`" in text and "report half" in text
    committed = (Path(__file__).resolve().parents[1] / "docs" / "results.md").read_text()
    for heading in (line for line in text.splitlines() if line.startswith("## ")):
        assert heading in committed, f"regenerating docs/results.md would change {heading!r}"
    assert "1 scorings of 1 runs" in capsys.readouterr().out
    (tmp_path / "plain.md").write_text("no markers here")
    with pytest.raises(ValueError, match="markers"):
        write_results([score_run(evaluated, "DATA", n_resamples=20)], tmp_path / "plain.md")


def test_an_unevaluated_run_is_refused(made_run, tmp_path):
    run = copytree(made_run.run_dir, tmp_path / "run")
    for name in run.glob("metrics-*"):
        name.unlink()
    with pytest.raises(RunError, match="helpers evaluate --run"):
        score_run(run, "DATA")
