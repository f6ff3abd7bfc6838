"""The synthetic demo dataset: layout, names, determinism, spread of sizes, learnable signal."""

from __future__ import annotations

import hashlib
import importlib.util
import shutil
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers.data import scan
from helpers.demo import draw_xray, make_demo_dataset

ROOT = Path(__file__).resolve().parents[1]


def _digest(root):
    h = hashlib.sha1()
    for path in sorted(root.rglob("*.jpeg")):
        h.update(path.relative_to(root).as_posix().encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def test_layout_counts_and_balance(demo_root):
    result = scan(demo_root)
    assert result.problems.empty
    images = result.images
    assert len(images) == 600
    assert set(images.split) == {"train", "val", "test"}
    train = images[images.split == "train"]
    assert 0.2 < (train.label == "NORMAL").mean() < 0.32
    test = images[images.split == "test"]
    assert 0.3 < (test.label == "NORMAL").mean() < 0.45
    assert images.groupby("patient").size().max() > 1  # several images per patient
    assert not set(train.patient) & set(test.patient)
    assert set(images[images.label == "PNEUMONIA"].kind) == {"bacteria", "virus"}
    assert {"L", "RGB"} <= set(images["mode"]) or (images["mode"] == "L").all()


def test_sizes_spread_like_the_real_data(demo_root):
    images = scan(demo_root).images
    assert images.width.max() / images.width.min() > 1.6
    aspect = images.width / images.height
    assert ((aspect > 1.1) & (aspect < 1.8)).mean() > 0.8


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    a = make_demo_dataset(tmp_path / "a", n_images=12, seed=3)
    b = make_demo_dataset(tmp_path / "b", n_images=12, seed=3)
    c = make_demo_dataset(tmp_path / "c", n_images=12, seed=4)
    assert _digest(a) == _digest(b) != _digest(c)
    assert not list((tmp_path / "a").glob(".demo-*"))  # no temporary folder left


def test_reuse_and_refuse_to_overwrite_real_data(tmp_path):
    root = make_demo_dataset(tmp_path, n_images=12, seed=1)
    stamp = root.stat().st_mtime_ns
    assert make_demo_dataset(tmp_path, n_images=12, seed=1).stat().st_mtime_ns == stamp
    real = tmp_path / "other" / "chest_xray"
    real.mkdir(parents=True)
    with pytest.raises(FileExistsError, match="not a demo dataset"):
        make_demo_dataset(tmp_path / "other", n_images=12)


def test_a_damaged_copy_is_drawn_again(tmp_path):
    """The reuse check compares the files and bytes the marker recorded: a deleted image or
    one cut short is noticed, and the dataset is drawn again (the same bytes)."""
    root = make_demo_dataset(tmp_path, n_images=12, seed=1)
    digest = _digest(root)
    victim = sorted(root.rglob("*.jpeg"))[3]
    victim.unlink()
    assert _digest(make_demo_dataset(tmp_path, n_images=12, seed=1)) == digest
    victim.write_bytes(victim.read_bytes()[:-10])
    assert _digest(make_demo_dataset(tmp_path, n_images=12, seed=1)) == digest
    assert not list(tmp_path.glob(".demo-*"))  # nothing left beside it


@pytest.mark.parametrize("when", ["while drawing", "at the rename"])
def test_a_dataset_another_process_finished_meanwhile_is_kept(when, tmp_path, monkeypatch):
    """Two processes draw the same dataset at once (two pytest sessions sharing the cache):
    the later one finds ``root`` complete when it is done, keeps it (the other may be reading
    it) and discards its own copy."""
    import helpers.demo

    theirs = make_demo_dataset(tmp_path / "theirs", n_images=12, seed=1)
    out = tmp_path / "shared"
    root = out / "chest_xray"
    made: list[int] = []

    def the_other_process_finishes() -> None:
        if not made:
            shutil.copytree(theirs, root)
            made.append(root.stat().st_ino)

    if when == "while drawing":
        plan = helpers.demo._split_plan

        def drawing(n_images):
            the_other_process_finishes()
            return plan(n_images)

        monkeypatch.setattr(helpers.demo, "_split_plan", drawing)
    else:
        rename = Path.rename

        def renaming(self, target):
            if Path(target) == root:
                the_other_process_finishes()
            return rename(self, target)

        monkeypatch.setattr(Path, "rename", renaming)
    assert make_demo_dataset(out, n_images=12, seed=1) == root
    assert made and root.stat().st_ino == made[0], "the other process's dataset was replaced"
    assert _digest(root) == _digest(theirs)
    assert [p.name for p in out.iterdir()] == ["chest_xray"], "the own copy is discarded"


def test_the_session_dataset_replaces_older_ones_in_the_cache(tmp_path, monkeypatch):
    """The repository's ``conftest.py`` keeps the demo dataset in pytest's cache, named by the
    generator's hash: a folder drawn by another version of ``helpers/demo.py`` is removed."""
    spec = importlib.util.spec_from_file_location("root_conftest", ROOT / "conftest.py")
    root_conftest = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(root_conftest)
    monkeypatch.setattr(root_conftest, "DEMO_IMAGES", 12)
    cache = tmp_path / "d"
    old = make_demo_dataset(cache / "demo-12-7-0123456789ab", n_images=12, seed=7)
    (cache / "lastfailed-notes").mkdir()  # not a demo folder: left alone

    def mkdir(name: str) -> Path:  # pytest's Cache.mkdir: a folder under .pytest_cache/d
        (cache / name).mkdir(parents=True, exist_ok=True)
        return cache / name

    config = types.SimpleNamespace(cache=types.SimpleNamespace(mkdir=mkdir))
    root = root_conftest._demo_dataset(config)
    assert root.is_dir() and root.parent.parent == cache and root.parent.name.startswith("demo-")
    assert not old.exists()
    assert sorted(p.name for p in cache.iterdir()) == sorted([root.parent.name, "lastfailed-notes"])
    assert root_conftest._demo_dataset(config) == root  # the session's own is kept


def test_pneumonia_is_brighter_in_the_lungs():
    """The learnable signal: opacities raise the lung fields' brightness."""
    rng = np.random.default_rng(0)
    lung = (slice(60, 140), slice(40, 90))
    normal = [draw_xray(rng, 256, 200, "none")[lung].mean() for _ in range(20)]
    sick = [draw_xray(rng, 256, 200, "bacteria")[lung].mean() for _ in range(20)]
    assert np.mean(sick) > np.mean(normal) + 3


@pytest.mark.slow
def test_cli_demo_data_and_scan(tmp_path):
    out = tmp_path / "cli"
    run = subprocess.run(
        [sys.executable, "-m", "helpers", "demo-data", str(out), "--images", "30", "--seed", "1"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "synthetic" in run.stdout
    with Image.open(next((out / "chest_xray" / "train" / "NORMAL").iterdir())) as img:
        assert img.format == "JPEG"
    scan_run = subprocess.run(
        [sys.executable, "-m", "helpers", "scan", str(out), "--json"],
        capture_output=True,
        text=True,
    )
    assert scan_run.returncode == 0 and '"usable": true' in scan_run.stdout
    missing = subprocess.run(
        [sys.executable, "-m", "helpers", "scan", str(tmp_path / "nowhere")],
        capture_output=True,
        text=True,
    )
    assert missing.returncode != 0 and "no such folder" in missing.stderr
