"""The data layer: layouts, scanning, patient ids, grouped splits, class weights, discovery."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from layouts import jpeg, tiny_layout
from PIL import Image

from helpers import cli, data
from helpers.config import CLASSES, Config
from helpers.data import (
    DatasetError,
    class_weights,
    make_holdout,
    make_splits,
    patient_id,
    pneumonia_kind,
    resolve_layout,
    scan,
    scan_report,
)


def test_pneumonia_kind():
    assert pneumonia_kind("person1_virus_6.jpeg", "PNEUMONIA") == "virus"
    assert pneumonia_kind("person3_bacteria_10.jpeg", "PNEUMONIA") == "bacteria"
    assert pneumonia_kind("IM-0001-0001.jpeg", "NORMAL") == "none"
    assert pneumonia_kind("odd.jpeg", "PNEUMONIA") == "unknown"


def test_resolve_layout_plain_nested_and_partial(tmp_path):
    plain = tiny_layout(tmp_path / "plain" / "chest_xray")
    assert set(resolve_layout(plain)) == {"train", "val", "test"}
    # The Kaggle zip: chest_xray/chest_xray/... with __MACOSX beside it.
    nested = tmp_path / "zip"
    tiny_layout(nested / "chest_xray" / "chest_xray")
    jpeg(nested / "chest_xray" / "__MACOSX" / "train" / "NORMAL" / "._x.jpeg")
    found = resolve_layout(nested)
    assert found["train"] == nested / "chest_xray" / "chest_xray" / "train"
    # Only a test folder, pointed at either from above or directly.
    only_test = tiny_layout(tmp_path / "only_test", splits=("test",))
    assert set(resolve_layout(only_test)) == {"test"}
    assert set(resolve_layout(only_test / "test")) == {"test"}


def test_resolve_layout_errors_name_the_folder(tmp_path):
    with pytest.raises(DatasetError, match="no such folder"):
        resolve_layout(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="no train/, val/ or test/"):
        resolve_layout(tmp_path / "empty")


def test_scan_columns_and_values(tmp_path):
    root = tiny_layout(tmp_path / "chest_xray")
    result = scan(root)
    assert list(result.images.columns) == data.COLUMNS
    assert len(result.images) == 6 and result.problems.empty
    row = result.images[
        (result.images.split == "train") & (result.images.label == "PNEUMONIA")
    ].iloc[0]
    assert (row.width, row.height, row["mode"], row.patient, row.kind, row.target) == (
        40,
        30,
        "RGB",
        "person1",
        "bacteria",
        1,
    )


def test_scan_reports_corrupt_and_stray_files(tmp_path):
    root = tiny_layout(tmp_path / "chest_xray")
    normal = root / "train" / "NORMAL"
    (normal / "notes.txt").write_text("my notes")
    (normal / "empty.jpeg").write_bytes(b"")
    (normal / "text.jpeg").write_text("not really a jpeg")
    noisy = np.random.default_rng(0).integers(0, 255, (300, 300), dtype=np.uint8)
    Image.fromarray(noisy).save(normal / "full.jpeg")
    good = (normal / "full.jpeg").read_bytes()
    (normal / "full.jpeg").unlink()
    (normal / "IM-0002-0001.jpeg").write_bytes(good[: len(good) // 2])  # truncated download
    (normal / ".DS_Store").write_bytes(b"\0\0")
    result = scan(root)
    reasons = {
        Path(p).name: r for p, r in zip(result.problems.path, result.problems.reason, strict=True)
    }
    assert set(reasons) == {"notes.txt", "empty.jpeg", "text.jpeg", "IM-0002-0001.jpeg"}
    assert "0 bytes" in reasons["empty.jpeg"]
    assert "truncated" in reasons["IM-0002-0001.jpeg"]
    assert result.ignored_junk == 1
    assert len(result.images) == 6  # the good files are all still there


def test_scan_case_insensitive_and_unknown_classes(tmp_path):
    root = tmp_path / "chest_xray"
    jpeg(root / "train" / "normal" / "IM-0001-0001.jpeg")
    jpeg(root / "train" / "pneumonia" / "person1_virus_1.jpeg")
    jpeg(root / "train" / "COVID" / "covid1.jpeg")
    result = scan(root)
    assert sorted(result.images.label) == ["NORMAL", "PNEUMONIA"]
    assert any("COVID" in note and "1 files ignored" in note for note in result.notes)


def test_scan_report_usable_and_not(tmp_path):
    root = tiny_layout(tmp_path / "chest_xray")
    assert scan_report(scan(root))["usable"]
    shutil.rmtree(root / "test" / "PNEUMONIA")
    report = scan_report(scan(root))
    assert not report["usable"] and "test" in report["reason"] and "PNEUMONIA" in report["reason"]
    (root / "test" / "PNEUMONIA").mkdir()
    assert any("empty class folder" in n for n in scan(root).notes)


def test_grouped_split_is_disjoint_stratified_and_seeded(demo_root):
    images = scan(demo_root).images
    config = Config().replace(val_split=0.2)
    splits = make_splits(images, config)
    train, val = splits["train"], splits["val"]
    assert not set(train.patient) & set(val.patient)
    assert len(train) + len(val) == int(images.split.isin(["train", "val"]).sum())
    assert abs(len(val) / (len(train) + len(val)) - 0.2) < 0.05
    assert abs(val.target.mean() - train.target.mean()) < 0.08
    again = make_splits(images, config)
    assert list(again["val"].path) == list(val.path)
    other = make_splits(images, config.replace(seed=config.seed + 1))
    assert list(other["val"].path) != list(val.path)
    assert (splits["test"].split == "test").all()


def test_subset_keeps_whole_patients(demo_root):
    images = scan(demo_root).images
    splits = make_splits(images, Config().replace(val_split=0.2, subset=100))
    train = splits["train"]
    assert 80 <= len(train) <= 130
    full = images[images.split.isin(["train", "val"])].groupby("patient").size()
    kept = train.groupby("patient").size()
    assert kept.to_dict() == full.loc[kept.index].to_dict()


def test_class_weights_formula():
    weights = class_weights([0] * 1341 + [1] * 3875)
    assert weights == {"NORMAL": 1.9448173005219984, "PNEUMONIA": 0.6730322580645162}
    assert class_weights([0, 1, 1, 1]) == {"NORMAL": 2.0, "PNEUMONIA": 4 / 6}
    with pytest.raises(DatasetError, match="no NORMAL"):
        class_weights([1, 1])


@pytest.mark.slow  # reads the headers of the 5,856 real images, about 2.5 s
def test_real_split_counts(shared_data):
    """The shared copy holds the complete Kaggle train and official test splits."""
    result = scan(shared_data / "kermany-224")
    counts = result.counts()
    assert (counts.loc["train", "NORMAL"], counts.loc["train", "PNEUMONIA"]) == (1341, 3875)
    assert (counts.loc["test", "NORMAL"], counts.loc["test", "PNEUMONIA"]) == (234, 390)
    assert result.problems.empty
    train = result.images[result.images.split == "train"]
    weights = class_weights(train.target)
    assert weights == {"NORMAL": 1.9448173005219984, "PNEUMONIA": 0.6730322580645162}
    splits = make_splits(result.images, Config())
    assert not set(splits["train"].patient) & set(splits["val"].patient)
    assert 0.04 < len(splits["val"]) / len(train) < 0.06
    assert np.isclose(splits["val"].target.mean(), 3875 / 5216, atol=0.03)
    assert len(splits["test"]) == 624


@pytest.mark.parametrize(
    ("name", "patient"),
    [
        ("person123_bacteria_456.jpeg", "person123"),
        ("person1_virus_6.jpeg", "person1"),
        ("person447_virus_921_1.jpeg", "person447"),
        ("IM-0115-0001.jpeg", "IM-0115"),
        ("NORMAL2-IM-1427-0001.jpeg", "IM-1427"),
        ("IM-0429-0001-0001.jpeg", "IM-0429"),
        ("IM-0429-0001-0002.jpeg", "IM-0429"),
        ("scan_of_someone.png", "scan_of_someone"),
    ],
)
def test_patient_id_from_kaggle_names(name, patient):
    assert patient_id(name) == patient


def test_computed_halves_split_patients_and_keep_the_class_mix(demo_root):
    """Any dataset but the official test split (here the demo) gets computed halves."""
    test = scan(demo_root).images.query("split == 'test'")
    assert data.halves_rule(test) == "computed"
    halves = data.test_halves(test)
    choose, report = halves["choose"], halves["report"]
    assert len(choose) + len(report) == len(test)
    assert not set(choose.patient) & set(report.patient)
    assert abs(choose.target.mean() - report.target.mean()) < 0.15
    again = data.test_halves(test.sample(frac=1, random_state=3))
    assert set(again["choose"].path) == set(choose.path)


def test_the_pinned_halves_are_the_official_test_split_cut_by_patient():
    """The committed membership (helpers/test_halves.csv, shipped in the package): 624 files,
    312 per half, 195 PNEUMONIA + 117 NORMAL each, no patient in both halves."""
    pinned = data.pinned_halves()
    assert len(pinned) == 624 and pinned["file"].is_unique
    for half in ("choose", "report"):
        rows = pinned[pinned["half"] == half]
        assert len(rows) == 312 and (rows["label"] == "PNEUMONIA").sum() == 195
    patients = pinned.assign(patient=pinned["file"].map(patient_id))
    by_patient = patients.groupby("patient")["half"].nunique()
    assert by_patient.max() == 1 and len(by_patient) == 404


def _official_names(tmp_path: Path, files: pd.DataFrame) -> pd.DataFrame:
    """A test table whose files carry the official names (tiny stand-in images)."""
    rows = []
    for row in files.itertuples():
        path = jpeg(tmp_path / "test" / row.label / row.file)
        rows.append({"path": str(path), "target": CLASSES.index(row.label),
                     "patient": patient_id(row.file)})  # fmt: skip
    return pd.DataFrame(rows)


def test_test_halves_returns_the_pinned_membership(tmp_path):
    """Files with the official names get exactly the committed halves, whatever order they
    come in, also when only some of them are there; one file more, and they are computed."""
    pinned = data.pinned_halves()
    some = pinned.sample(60, random_state=0)
    table = _official_names(tmp_path, some).sample(frac=1, random_state=1)
    assert data.halves_rule(table) == "pinned"
    halves = data.test_halves(table)
    expected = some.set_index("file")["half"]
    for half, rows in halves.items():
        assert {Path(p).name for p in rows["path"]} == set(expected[expected == half].index)
    stranger = {"path": str(jpeg(tmp_path / "x" / "IM-9999-0001.jpeg")), "target": 0,
                "patient": "IM-9999"}  # fmt: skip
    assert data.halves_rule(pd.concat([table, pd.DataFrame([stranger])])) == "computed"


def test_the_pinned_halves_are_what_the_function_computes(shared_data):
    """Where the real data is, the committed file equals the rule that drew it (scikit-learn
    1.9.1); with a scikit-learn that draws other folds this test fails, and the pinned file
    is what keeps the report half the same images."""
    images = scan(shared_data / "kermany-224", splits=["test"]).images
    assert data.halves_rule(images) == "pinned"
    computed = data.computed_test_halves(images)
    pinned = data.pinned_halves().set_index("file")["half"]
    for half, rows in computed.items():
        names = {Path(p).name for p in rows["path"]}
        assert names == set(pinned[pinned == half].index), half
    returned = data.test_halves(images)
    for half, rows in returned.items():
        assert set(rows["path"]) == set(computed[half]["path"])
        assert len(rows) == 312 and rows.target.sum() == 195 and rows.patient.nunique() == 202


def test_make_holdout_links_a_patient_disjoint_test_split(tmp_path, demo_root):
    counts = make_holdout(demo_root, tmp_path / "holdout", fraction=0.2, seed=1)
    result = scan(tmp_path / "holdout")
    images = result.images
    pool = scan(demo_root).images.query("split != 'test'")
    assert counts["train"] + counts["test"] == len(pool) == len(images)
    assert set(images["split"]) == {"train", "test"}
    train, test = images[images.split == "train"], images[images.split == "test"]
    assert not set(train.patient) & set(test.patient)
    assert 0.1 < len(test) / len(images) < 0.3 and test.target.nunique() == 2
    links = list((tmp_path / "holdout").rglob("*.jpeg"))
    assert all(p.is_symlink() for p in links)
    with pytest.raises(FileExistsError, match="choose a new folder"):
        make_holdout(demo_root, tmp_path / "holdout")


def test_cli_holdout_and_demo_data_errors_are_one_line(demo_root, tmp_path, capsys):
    (tmp_path / "taken").mkdir()
    assert cli.main(["holdout", str(demo_root), str(tmp_path / "taken")]) == 2
    assert cli.main(["holdout", str(tmp_path / "nowhere"), str(tmp_path / "new")]) == 2
    real = tiny_layout(tmp_path / "real" / "chest_xray")
    assert cli.main(["demo-data", str(real.parent), "--images", "20"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 3 and all(line.startswith("error: ") for line in err)
    assert "choose a new folder" in err[0] and "no such folder" in err[1]
    assert "not a demo dataset" in err[2]
