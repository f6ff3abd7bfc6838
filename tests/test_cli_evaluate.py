"""evaluate_run, format_metrics and the evaluate / predict / export subcommands on one run folder
made without training (``made_run``), so that all of it is in the fast subset."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from shutil import copytree

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from helpers import cli
from helpers import evaluate as evaluate_module
from helpers.augment import normalize_batch
from helpers.data import DatasetError
from helpers.evaluate import (
    RUN_METRIC_KEYS,
    VAL_THRESHOLD_KEYS,
    evaluate_run,
    predict_images,
    predict_proba,
)
from helpers.explain import gradcam_file_name
from helpers.images import load_gray
from helpers.loader import BatchLoader, load_run_data
from helpers.manifest import read_manifest, relocate, write_manifest
from helpers.metrics import CI_KEYS, compute_metrics, youden_threshold
from helpers.report import format_metrics
from helpers.runs import load_model_from_run
from helpers.train import train


@dataclass
class TinyRun:
    """A copy of the session's quick run, where its cache lives, and its test evaluation."""

    run_dir: Path
    outputs: Path
    data_root: Path
    metrics: dict


@pytest.fixture(scope="module")
def tiny(made_run, session_outputs, demo_root, tmp_path_factory) -> TinyRun:
    """The session's made run (copied), evaluated on the demo test folder.

    On the CPU even where there is a GPU: the tests compare its probabilities with ones
    computed on the CPU, and a GPU's convolutions (TF32) differ from those in the 4th digit.
    """
    run_dir = copytree(made_run.run_dir, tmp_path_factory.mktemp("evaluate") / "run")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PNEUMONIA_OUTPUTS", str(session_outputs))
        metrics = evaluate_run(run_dir, progress=False, device="cpu", n_resamples=200)
    return TinyRun(run_dir, session_outputs, Path(demo_root), metrics)


@pytest.fixture()
def shared_outputs(tiny, monkeypatch) -> Path:
    """Point outputs at the session's folder so evaluations reuse the training cache."""
    monkeypatch.setenv("PNEUMONIA_OUTPUTS", str(tiny.outputs))
    return tiny.outputs


def _predictions(run_dir: Path, split: str = "test") -> pd.DataFrame:
    return pd.read_csv(run_dir / f"predictions-{split}.csv")


# --- evaluate_run --------------------------------------------------------------------------


def test_metrics_file_holds_the_documented_keys_and_sane_numbers(tiny):
    m = tiny.metrics
    on_disk = json.loads((tiny.run_dir / "metrics-test.json").read_text())
    assert on_disk == m
    assert tuple(m) == RUN_METRIC_KEYS
    assert tuple(m["val_threshold"]) == VAL_THRESHOLD_KEYS
    assert tuple(m["ci95"]) == CI_KEYS

    n_test_files = sum(1 for p in (tiny.data_root / "test").rglob("*") if p.is_file())
    assert m["n_images"] == n_test_files
    assert np.sum(m["confusion_matrix"]) == m["n_images"]
    assert sum(c["support"] for c in m["per_class"].values()) == m["n_images"]
    for key in ("accuracy", "weighted_f1", "macro_f1", "roc_auc", "average_precision"):
        assert 0.0 <= m[key] <= 1.0, key
    for key in CI_KEYS:
        lo, hi = m["ci95"][key]
        assert lo <= m[key] <= hi, key
        assert hi - lo > 0, key  # 45 images: the interval cannot be a point
    assert m["threshold"] == 0.5
    assert m["split"] == "test"
    assert Path(m["data_root"]) == tiny.data_root
    assert m["weights_used"] == "none"
    assert m["is_demo"] is True  # the demo folder's marker, whatever config.json says
    assert m["tta"] is False
    assert m["n_left_out"] == 0 and m["left_out"] == []
    assert 0 < m["n_patients"] <= m["n_images"]

    # The headline numbers follow from the saved per-image predictions.
    preds = _predictions(tiny.run_dir)
    assert len(preds) == m["n_images"]
    assert all(Path(p).is_relative_to(tiny.data_root / "test") for p in preds["path"])
    assert list(preds.columns) == ["path", "patient", "target", "p_pneumonia", "test_half"]
    assert preds["patient"].nunique() == m["n_patients"]
    # ... and their test halves are the manifest's.
    manifest = read_manifest(tiny.run_dir).set_index("path")
    assert list(preds["test_half"]) == list(manifest.loc[preds["path"], "test_half"])
    assert set(preds["test_half"]) == {"choose", "report"}
    again = compute_metrics(preds["target"], preds["p_pneumonia"], 0.5)
    assert again["confusion_matrix"] == m["confusion_matrix"]
    assert again["roc_auc"] == pytest.approx(m["roc_auc"], abs=1e-9)


def test_threshold_is_youden_on_validation_not_on_test(tiny, shared_outputs):
    model, config, _ = load_model_from_run(tiny.run_dir)
    data = load_run_data(tiny.run_dir, config, progress=False)
    indices, targets = data.rows("val")
    loader = BatchLoader(data.cache, indices, targets, 64, shuffle=False, augment=False, seed=0)
    y_val, p_val = predict_proba(model, loader)
    expected = youden_threshold(y_val, p_val)

    vt = tiny.metrics["val_threshold"]
    assert vt["threshold"] == pytest.approx(expected, abs=1e-6)
    assert "validation" in vt["source"] and not vt["source"].startswith("fallback")
    preds = _predictions(tiny.run_dir)
    on_test = youden_threshold(preds["target"], preds["p_pneumonia"])
    assert on_test != pytest.approx(expected, abs=1e-6)  # so this test can tell them apart
    at_val = compute_metrics(preds["target"], preds["p_pneumonia"], expected)
    for key in ("sensitivity", "specificity", "accuracy", "weighted_f1"):
        assert vt[key] == pytest.approx(at_val[key]), key


def test_format_metrics_shows_the_table(tiny):
    text = format_metrics(tiny.metrics)
    for needle in ("NORMAL", "PNEUMONIA", "AUROC", "95% CI", "Youden", "synthetic demo"):
        assert needle in text
    assert f"{tiny.metrics['accuracy']:.3f}" in text


def test_evaluate_a_folder_holding_only_test(tiny, shared_outputs, tmp_path):
    only = tmp_path / "elsewhere"
    shutil.copytree(tiny.data_root / "test", only / "test")
    run = copytree(tiny.run_dir, tmp_path / "run")
    m = evaluate_run(run, data_dir=only, progress=False, n_resamples=100)
    assert Path(m["data_root"]) == only.resolve()
    assert m["n_images"] == tiny.metrics["n_images"]
    # Same images, same probabilities; the threshold still comes from the training data.
    ours = _predictions(run).assign(name=lambda d: d["path"].map(lambda p: Path(p).name))
    theirs = _predictions(tiny.run_dir).assign(name=lambda d: d["path"].map(lambda p: Path(p).name))
    joined = ours.merge(theirs, on="name", suffixes=("", "_train_root"))
    assert len(joined) == m["n_images"]
    assert all(Path(p).is_relative_to(only) for p in joined["path"])
    np.testing.assert_allclose(joined["p_pneumonia"], joined["p_pneumonia_train_root"], atol=1e-6)
    assert m["val_threshold"]["threshold"] == tiny.metrics["val_threshold"]["threshold"]


def test_threshold_falls_back_to_half_when_the_validation_images_are_gone(
    tiny, shared_outputs, tmp_path, capsys
):
    """A copy of the test folder only, and the training data gone: the test images are scored,
    the second threshold falls back to 0.5, and both the metrics and a warning say why."""
    moved = tmp_path / "moved" / "chest_xray"
    shutil.copytree(tiny.data_root, moved)
    run = copytree(tiny.run_dir, tmp_path / "run")
    manifest = read_manifest(run)
    write_manifest(run, relocate(manifest, moved))  # as if the run had trained on the copy
    gone = relocate(manifest, moved).query("split == 'val'")["path"].iloc[0]
    only = tmp_path / "only-test"
    shutil.copytree(moved / "test", only / "test")
    shutil.rmtree(moved)  # the training data is gone
    with pytest.warns(UserWarning, match="fallback 0.5"):
        m = evaluate_run(run, data_dir=only, progress=False, n_resamples=100)
    vt = m["val_threshold"]
    assert vt["threshold"] == 0.5
    assert vt["source"].startswith("fallback") and f"{gone}: missing" in vt["source"]
    assert vt["accuracy"] == m["accuracy"]  # same threshold, same numbers
    assert "fallback 0.5" in format_metrics(m)
    # Without data_dir there is nothing to evaluate: a clear error naming a missing file.
    assert cli.main(["evaluate", "--run", str(run)]) == 2
    err = capsys.readouterr().err
    assert str(moved / "test") in err and "missing" in err and "--data" in err


@pytest.mark.slow  # a cache build and an evaluation, about 1.5 s
def test_evaluate_from_another_folder_after_the_data_moved(made_run, shared_outputs, tmp_path):
    """A run whose data was found by a relative path is evaluated from another working
    directory, and, once the data has moved, with ``--data``: the same probabilities."""
    data_copy = tmp_path / "work" / "demo"
    shutil.copytree(made_run.data.location.root, data_copy)
    train_from = tmp_path / "work"
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(train_from)
        Path("run").mkdir()  # the input check's statistics, as made_run measured them
        shutil.copy(made_run.run_dir / "input-stats.json", "run")
        started = train(made_run.config, "run", "demo", progress=False, stop_after=0)
    run = started.run_dir if started.run_dir.is_absolute() else train_from / started.run_dir
    shutil.copy(made_run.run_dir / "best.pt", run / "best.pt")
    record = json.loads((run / "config.json").read_text())
    assert record["data"]["root"] == str(data_copy.resolve())
    assert all(Path(p).is_absolute() for p in read_manifest(run)["path"])

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(elsewhere)
        here = evaluate_run(run, progress=False, device="cpu", n_resamples=50)
        assert not here["val_threshold"]["source"].startswith("fallback")
        moved = tmp_path / "moved"
        data_copy.rename(moved)
        with pytest.raises(DatasetError, match="missing.*--data"):
            evaluate_run(run, progress=False, device="cpu", n_resamples=50)
        there = evaluate_run(run, data_dir="../moved", progress=False, device="cpu", n_resamples=50)
    assert there["n_images"] == here["n_images"] and Path(there["data_root"]) == moved
    assert there["val_threshold"]["threshold"] == here["val_threshold"]["threshold"]
    for key in ("accuracy", "roc_auc", "confusion_matrix"):
        assert there[key] == here[key], key


def test_evaluate_refuses_images_that_changed(made_run, shared_outputs, tmp_path, capsys):
    """Another file under a recorded name (same relative path, other bytes) is not evaluated."""
    data_copy = tmp_path / "copy"
    shutil.copytree(made_run.data.location.root, data_copy)
    run = copytree(made_run.run_dir, tmp_path / "run")
    test = read_manifest(run).query("split == 'test'")
    changed = data_copy / test["relpath"].iloc[3]
    shutil.copy(data_copy / test["relpath"].iloc[0], changed)
    code = cli.main(["evaluate", "--run", str(run), "--data", str(data_copy)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert str(changed) in err and "not the image this run used" in err
    assert not (run / "metrics-test.json").exists()


def test_images_that_fail_to_decode_are_counted_and_named(made_run, shared_outputs, tmp_path):
    """An image that decodes no more (here: its cache row marked failed) is left out of the
    metrics, and metrics-test.json and the printed report say how many and which."""
    run = copytree(made_run.run_dir, tmp_path / "run")
    data = load_run_data(run, made_run.config, progress=False)
    broken = data.splits["test"]["path"].iloc[0]
    index = json.loads(data.cache.index_path.read_text())
    row = index["paths"].index(broken)
    index["ok"][row] = False
    index["failed"] = [{"path": broken, "reason": "truncated or corrupt", "permanent": True}]
    data.cache.index_path.write_text(json.dumps(index))
    try:
        with pytest.warns(UserWarning, match="1 of .* test images could not be decoded"):
            m = evaluate_run(run, progress=False, device="cpu", n_resamples=50)
    finally:
        index["ok"][row], index["failed"] = True, []
        data.cache.index_path.write_text(json.dumps(index))
    assert m["n_left_out"] == 1
    assert m["left_out"] == [{"path": broken, "reason": "truncated or corrupt"}]
    assert m["n_images"] == len(data.splits["test"]) - 1
    assert broken not in set(_predictions(run)["path"])
    text = format_metrics(m)
    assert "left out: 1 images" in text and broken in text


def test_an_error_in_scoring_is_not_turned_into_a_fallback(
    tiny, shared_outputs, tmp_path, monkeypatch
):
    """Only the cases that truly leave no threshold (no usable validation images, one class)
    fall back to 0.5; an error of the project's own code while scoring is raised, not
    reported as "fallback 0.5" (a blanket ``except ValueError`` used to do that)."""

    def bug(*args, **kwargs):
        raise ValueError("a bug in the scoring code")

    monkeypatch.setattr(evaluate_module, "youden_threshold", bug)
    run = copytree(tiny.run_dir, tmp_path / "run")
    with pytest.raises(ValueError, match="a bug in the scoring code"):
        evaluate_run(run, progress=False, device="cpu", n_resamples=20)
    before = (tiny.run_dir / "metrics-test.json").read_text()
    assert (run / "metrics-test.json").read_text() == before  # nothing written


# --- the command line ----------------------------------------------------------------------


def test_cli_evaluate_prints_the_report(tiny, shared_outputs, tmp_path, capsys, monkeypatch):
    run = copytree(tiny.run_dir, tmp_path / "run")
    scored: list[int] = []
    score = evaluate_module._score
    monkeypatch.setattr(
        evaluate_module, "_score", lambda *a, **kw: scored.append(len(a[2])) or score(*a, **kw)
    )
    assert cli.main(["evaluate", "--run", str(run), "--split", "val", "--resamples", "100"]) == 0
    assert len(scored) == 1, f"the validation split was scored {len(scored)} times"
    out = capsys.readouterr().out
    assert "val split" in out and "AUROC" in out
    assert str(run / "metrics-val.json") in out
    m = json.loads((run / "metrics-val.json").read_text())
    assert m["split"] == "val" and tuple(m) == RUN_METRIC_KEYS
    assert "evaluated split itself" in m["val_threshold"]["source"]
    predictions = pd.read_csv(run / "predictions-val.csv")
    youden = youden_threshold(
        predictions["target"].to_numpy(), predictions["p_pneumonia"].to_numpy()
    )
    assert m["val_threshold"]["threshold"] == pytest.approx(youden)


def test_cli_evaluate_without_best_pt_fails_naming_the_file(tmp_path, capsys):
    run = tmp_path / "unfinished-run"
    run.mkdir()
    (run / "config.json").write_text("{}")
    assert cli.main(["evaluate", "--run", str(run)]) != 0
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert err.startswith("error:") and str(run / "best.pt") in err
    assert not (run / "metrics-test.json").exists()


def test_cli_predict_scores_good_files_and_names_bad_ones(tiny, tmp_path, capsys):
    preds = _predictions(tiny.run_dir).iloc[[0, -1]]
    good = list(preds["path"])
    corrupt = tmp_path / "corrupt.jpeg"
    corrupt.write_bytes(b"\xff\xd8 this is not really a jpeg")
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    folder = tmp_path / "a-folder.jpeg"
    folder.mkdir()
    argv = ["predict", "--run", str(tiny.run_dir), "--device", "cpu", good[0], str(corrupt)]
    argv += [str(folder), str(empty), good[1]]
    assert cli.main(argv) == 1
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert len(lines) == 2
    for line, (path, p) in zip(lines, zip(good, preds["p_pneumonia"], strict=True), strict=True):
        label = "PNEUMONIA" if p >= 0.5 else "NORMAL"
        assert line == f"{path}  {label}  P(pneumonia)={p:.3f}"
    errors = captured.err.splitlines()
    assert len(errors) == 3
    for bad, line in zip((corrupt, folder, empty), errors, strict=True):
        assert line.startswith(f"error: {bad}: ")
    assert "directory" in errors[1] and "zero bytes" in errors[2]


def test_predict_gives_the_evaluation_probability(tiny):
    preds = _predictions(tiny.run_dir)
    assert preds["p_pneumonia"].std() > 1e-3  # a model whose answers differ per image
    model, config, _ = load_model_from_run(tiny.run_dir)
    results = predict_images(model, list(preds["path"]), config.image_size, batch_size=7)
    assert [r.path for r in results] == list(preds["path"])
    assert all(r.error is None for r in results)
    got = np.array([r.p_pneumonia for r in results])
    np.testing.assert_allclose(got, preds["p_pneumonia"].to_numpy(), atol=1e-5, rtol=0)


@pytest.mark.slow  # a TorchScript export, about 1 s
def test_cli_export_gives_the_eager_probabilities(tiny, tmp_path, capsys):
    """``export`` writes the run's model and it computes the eager probabilities. TorchScript
    only: the command passes ``--format`` through to ``export_model``, whose ONNX branch
    ``test_export.py`` covers (a second ONNX export here would cost ~8 s)."""
    from helpers.export import load_exported

    fmt = "torchscript"

    out = tmp_path / f"model.{fmt}"
    assert cli.main(["export", "--run", str(tiny.run_dir), "--format", fmt, "--out", str(out)]) == 0
    assert str(out) in capsys.readouterr().out
    exported = load_exported(out)
    assert exported.metadata["image_size"] == 64

    model, config, _ = load_model_from_run(tiny.run_dir)
    paths = list(_predictions(tiny.run_dir)["path"][:6])
    x = normalize_batch(
        torch.from_numpy(np.stack([load_gray(p, config.image_size) for p in paths]))[:, None]
    )
    with torch.inference_mode():
        expected = torch.softmax(model(x), dim=1)[:, 1]
    got = torch.softmax(exported(x), dim=1)[:, 1]
    assert expected.std() > 1e-3
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)


def test_test_time_augmentation_averages_each_image_with_its_mirror(tiny, shared_outputs, tmp_path):
    run = copytree(tiny.run_dir, tmp_path / "run")
    m = evaluate_run(run, split="test", progress=False, tta=True, device="cpu", n_resamples=100)
    assert m["tta"] is True and (run / "metrics-test-tta.json").is_file()
    tta = pd.read_csv(run / "predictions-test-tta.csv")
    plain = _predictions(tiny.run_dir)
    assert list(tta["path"]) == list(plain["path"])
    model, config, _ = load_model_from_run(run)
    paths = list(tta["path"][:5])
    x = normalize_batch(
        torch.from_numpy(np.stack([load_gray(p, config.image_size) for p in paths]))[:, None]
    )
    with torch.inference_mode():
        both = (model(x).softmax(1)[:, 1] + model(x.flip(-1)).softmax(1)[:, 1]) / 2
    np.testing.assert_allclose(tta["p_pneumonia"][:5], both.numpy(), atol=1e-5)
    assert not np.allclose(tta["p_pneumonia"], plain["p_pneumonia"])


def test_cli_predict_writes_gradcam_overlays(tiny, tmp_path, capsys):
    paths = list(_predictions(tiny.run_dir)["path"][:2])
    out = tmp_path / "cams"
    assert cli.main(["predict", "--run", str(tiny.run_dir), *paths, "--gradcam", str(out)]) == 0
    printed = capsys.readouterr().out
    written = [
        Path(line.split("Grad-CAM: ", 1)[1]) for line in printed.splitlines() if "Grad-CAM:" in line
    ]
    assert sorted(out.glob("*-gradcam.png")) == sorted(written) and len(written) == len(paths)
    for path, overlay_file in zip(paths, written, strict=True):
        assert overlay_file.name == gradcam_file_name(path)
        with Image.open(path) as picture, Image.open(overlay_file) as drawn:
            # at the picture's own size (the demo's are 320-640 px wide), not the run's 64 px
            assert drawn.mode == "RGB" and drawn.size == picture.size != (64, 64)


@pytest.mark.slow  # a TorchScript export, about 1 s
def test_cli_export_reports_the_check_against_eager(tiny, tmp_path, capsys):
    out = tmp_path / "model.pt"
    assert (
        cli.main(
            ["export", "--run", str(tiny.run_dir), "--format", "torchscript", "--out", str(out)]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "checked against the eager model" in printed and "ms" in printed
