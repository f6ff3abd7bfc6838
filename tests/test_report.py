"""The README figures command: every figure drawn from a real run folder, with provenance."""

from __future__ import annotations

from shutil import copytree

import pytest
from PIL import Image

from helpers import cli
from helpers.evaluate import evaluate_run


@pytest.mark.slow  # every README figure drawn and saved, about 3 s
def test_figures_from_an_evaluated_run(
    made_run, session_outputs, demo_root, tmp_path, capsys, monkeypatch
):
    monkeypatch.setenv("PNEUMONIA_OUTPUTS", str(session_outputs))
    run = copytree(made_run.run_dir, tmp_path / "run")
    evaluate_run(run, progress=False, n_resamples=100)
    out = tmp_path / "figures"
    argv = ["figures", "--eda-data", str(demo_root), "--samples-data", str(demo_root)]
    assert cli.main(argv + ["--run", str(run), "--out", str(out)]) == 0
    names = {
        "class_balance.png",
        "size_histograms.png",
        "resized_samples.png",
        "training_history.png",
        "confusion_matrix.png",
        "roc.png",
        "pr.png",
    }
    assert {p.name for p in out.glob("*.png")} == names
    for name in names:
        with Image.open(out / name) as img:
            assert img.width > 200
        assert (out / name).stat().st_size < 300_000
    table2 = (out / "table2.md").read_text()
    for row in ("NORMAL", "PNEUMONIA", "accuracy", "weighted avg"):
        assert row in table2
    table = (out / "README.md").read_text()
    assert all(f"`{name}`" in table for name in names | {"table2.md"})
    assert "weights none" in table and str(demo_root) in table
    assert "roc.png" in capsys.readouterr().out
