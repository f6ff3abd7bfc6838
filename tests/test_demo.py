"""The synthetic demo dataset: layout, names, determinism, spread of sizes, learnable signal."""

from __future__ import annotations

import hashlib
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from helpers.data import scan
from helpers.demo import draw_xray, make_demo_dataset


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
    a = make_demo_dataset(tmp_path / "a", n_images=40, seed=3)
    b = make_demo_dataset(tmp_path / "b", n_images=40, seed=3)
    c = make_demo_dataset(tmp_path / "c", n_images=40, seed=4)
    assert _digest(a) == _digest(b) != _digest(c)
    assert not list((tmp_path / "a").glob(".demo-*"))  # no temporary folder left


def test_reuse_and_refuse_to_overwrite_real_data(tmp_path):
    root = make_demo_dataset(tmp_path, n_images=40, seed=1)
    stamp = root.stat().st_mtime_ns
    assert make_demo_dataset(tmp_path, n_images=40, seed=1).stat().st_mtime_ns == stamp
    real = tmp_path / "other" / "chest_xray"
    real.mkdir(parents=True)
    with pytest.raises(FileExistsError, match="not a demo dataset"):
        make_demo_dataset(tmp_path / "other", n_images=40)


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
