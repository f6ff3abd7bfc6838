"""The data manifest: a run folder says which images it trained, validated and was tested on,
with their hashes; the record of versions and commit in config.json."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from shutil import copytree

import pandas as pd
import pytest
import sklearn
import torch
from layouts import jpeg

from helpers import cli
from helpers.config import Config
from helpers.data import make_splits, scan
from helpers.data import test_halves as halves_of
from helpers.manifest import (
    MANIFEST_COLUMNS,
    ManifestError,
    manifest_fingerprint,
    read_manifest,
    relocate,
    verify,
)
from helpers.runs import _split_fingerprint, git_commit


def test_a_run_folder_lists_every_image_with_its_split_half_and_hash(made_run, demo_root):
    run = made_run.run_dir
    manifest = read_manifest(run)
    assert tuple(manifest.columns[: len(MANIFEST_COLUMNS)]) == MANIFEST_COLUMNS
    images = scan(demo_root).images
    splits = make_splits(images, made_run.config)  # quick mode: a subset of the training pool
    assert manifest["path"].is_unique and set(manifest["path"]) <= set(images["path"])
    for split, table in splits.items():
        assert list(manifest.query("split == @split")["path"]) == list(table["path"]), split
    halves = halves_of(splits["test"])
    test = manifest.query("split == 'test'").set_index("path")["test_half"]
    for half, rows in halves.items():
        assert set(test[test == half].index) == set(rows["path"])
    assert set(manifest.query("split != 'test'")["test_half"]) == {""}
    row = manifest.iloc[17]
    content = Path(row.path).read_bytes()
    assert row.sha256 == hashlib.sha256(content).hexdigest() and row.bytes == len(content)
    assert row.relpath == "/".join(Path(row.path).parts[-3:])
    record = json.loads((run / "config.json").read_text())
    assert record["data"]["fingerprint"] == manifest_fingerprint(manifest)
    assert record["data"]["test_halves"].startswith("computed: StratifiedGroupKFold")


def test_config_json_records_the_versions_and_the_commit(made_run):
    record = json.loads((made_run.run_dir / "config.json").read_text())
    versions = record["versions"]
    assert versions["scikit-learn"] == sklearn.__version__
    assert versions["torch"] == torch.__version__
    assert {"pillow", "torchvision", "numpy", "python"} <= set(versions)
    checkout = Path(__file__).resolve().parents[1]
    expected = git_commit(checkout) if (checkout / ".git").exists() else None
    assert record["commit"] == expected


def test_the_commit_is_read_from_a_checkout_a_worktree_and_packed_refs(tmp_path):
    sha = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "repo"
    (repo / ".git" / "refs" / "heads").mkdir(parents=True)
    (repo / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    (repo / ".git" / "refs" / "heads" / "main").write_text(sha + "\n")
    assert git_commit(repo) == sha
    other = "fedcba9876543210fedcba9876543210fedcba98"
    (repo / ".git" / "packed-refs").write_text(f"# pack-refs\n{other} refs/heads/topic\n")
    worktree_git = repo / ".git" / "worktrees" / "topic"
    worktree_git.mkdir(parents=True)
    (worktree_git / "HEAD").write_text("ref: refs/heads/topic\n")
    (worktree_git / "commondir").write_text("../..\n")
    worktree = tmp_path / "topic"
    worktree.mkdir()
    (worktree / ".git").write_text(f"gitdir: {worktree_git}\n")
    assert git_commit(worktree) == other
    (repo / ".git" / "HEAD").write_text(other + "\n")  # detached
    assert git_commit(repo) == other
    assert git_commit(tmp_path / "not-a-checkout") is None


def test_a_moved_dataset_is_found_by_relative_path(made_run, tmp_path):
    """Moved (and its folders' case changed), the images are found under the new folder; a
    missing one and a changed one are named."""
    manifest = read_manifest(made_run.run_dir)
    moved = tmp_path / "elsewhere" / "xrays"
    shutil.copytree(made_run.data.location.root, moved)
    (moved / "test" / "NORMAL").rename(moved / "test" / "normal")
    again = relocate(manifest, tmp_path / "elsewhere")
    assert all(Path(p).is_file() for p in again["path"])
    assert all(Path(p).is_relative_to(moved) for p in again["path"])
    verify(again)
    assert manifest_fingerprint(again) == manifest_fingerprint(manifest)
    test = again.query("split == 'test'")
    only_test = relocate(test, moved / "test")  # a folder holding one split
    verify(only_test)
    gone = Path(test["path"].iloc[0])
    gone.unlink()
    with pytest.raises(ManifestError, match=f"{gone}: missing.*{test['relpath'].iloc[0]}"):
        verify(test, where="a test")
    changed = Path(test["path"].iloc[1])
    changed.write_bytes(changed.read_bytes()[:-1] + b"\0")
    with pytest.raises(ManifestError, match=f"{changed}: not the image this run used"):
        verify(test.iloc[1:])


def test_a_missing_or_foreign_manifest_is_named(tmp_path):
    with pytest.raises(ManifestError, match="no data manifest.*helpers manifest --run"):
        read_manifest(tmp_path)
    (tmp_path / "manifest.csv").write_text("path,split\na.jpeg,train\n")
    with pytest.raises(ManifestError, match=r"manifest.csv: not a data manifest.*missing columns"):
        read_manifest(tmp_path)
    row = dict.fromkeys(MANIFEST_COLUMNS, "x") | {"bytes": "1", "label": "NORMAL"}
    pd.DataFrame([row | {"split": "holdout"}]).to_csv(tmp_path / "manifest.csv", index=False)
    with pytest.raises(ManifestError, match="unknown splits"):
        read_manifest(tmp_path)
    pd.DataFrame([row | {"split": "train", "bytes": "many"}]).to_csv(
        tmp_path / "manifest.csv", index=False
    )
    with pytest.raises(ManifestError, match="manifest.csv: not a data manifest.*bytes"):
        read_manifest(tmp_path)


def test_a_run_trained_before_manifests_gets_one_checked_against_its_record(
    made_run, tmp_path, capsys
):
    """``python -m helpers manifest`` draws the split again and writes it only when it is the
    one the run recorded (the old fingerprint: each image's split and path)."""
    run = copytree(made_run.run_dir, tmp_path / "old-run")
    original = (run / "manifest.csv").read_text()
    (run / "manifest.csv").unlink()
    record = json.loads((run / "config.json").read_text())
    splits = make_splits(scan(made_run.data.location.root).images, made_run.config)
    record["data"]["fingerprint"] = _split_fingerprint(splits)  # what an old run recorded
    (run / "config.json").write_text(json.dumps(record))
    assert cli.main(["manifest", "--run", str(run)]) == 0
    assert (run / "manifest.csv").read_text() == original
    assert cli.main(["manifest", "--run", str(run)]) == 2  # never overwritten
    assert "exists already" in capsys.readouterr().err

    (run / "manifest.csv").unlink()
    other = Config.from_dict(record["config"]).replace(seed=7)  # another split
    record["data"]["fingerprint"] = _split_fingerprint(
        make_splits(scan(made_run.data.location.root).images, other)
    )
    (run / "config.json").write_text(json.dumps(record))
    assert cli.main(["manifest", "--run", str(run)]) == 2
    err = capsys.readouterr().err
    assert "is not the one the run recorded" in err and not (run / "manifest.csv").exists()


def test_the_split_recorded_is_the_split_trained_on(tmp_path, outputs):
    """A manifest row per image of a dataset with a problem file: the file is not in it. The
    data's fingerprint (what a resumed run compares) stays the same when the dataset folder
    moves and changes when one image's bytes change."""
    from helpers.loader import prepare_data

    root = tmp_path / "d"
    for split, n in (("train", 12), ("test", 4)):
        for label in ("NORMAL", "PNEUMONIA"):
            for i in range(n):
                name = f"IM-{i:04d}-0001.jpeg" if label == "NORMAL" else f"person{i}_virus_{i}.jpeg"
                jpeg(root / split / label / name)
    (root / "train" / "NORMAL" / "bad.jpeg").write_bytes(b"")
    config = Config(image_size=32, val_split=0.25)
    data = prepare_data(config, root, progress=False)
    assert len(data.manifest) == 32 and data.manifest["split"].value_counts()["test"] == 8
    moved = shutil.copytree(root, tmp_path / "elsewhere" / "d")
    shutil.rmtree(root)
    assert prepare_data(config, moved, progress=False).fingerprint() == data.fingerprint()
    jpeg(moved / "test" / "NORMAL" / "IM-0001-0001.jpeg", size=(41, 30))  # other bytes
    assert prepare_data(config, moved, progress=False).fingerprint() != data.fingerprint()
