"""Shared fixtures: a small demo dataset built once per test session, and the real data."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("MPLBACKEND", "Agg")

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="session")
def demo_root(tmp_path_factory) -> Path:
    """A 600-image demo dataset (Kaggle layout, the notebooks' default), written once."""
    from helpers.demo import make_demo_dataset

    return make_demo_dataset(tmp_path_factory.mktemp("demo"), n_images=600, seed=7)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` next to the checkout; tests using it skip when it is absent."""
    if not (SHARED_DATA / "kermany-224").is_dir():
        pytest.skip("../shared/data is not available")
    return SHARED_DATA


@pytest.fixture(autouse=True)
def _isolated_outputs(tmp_path, monkeypatch):
    """Every test writes outputs under its own temporary folder, never into the checkout."""
    monkeypatch.setenv("PNEUMONIA_OUTPUTS", str(tmp_path / "outputs"))
    monkeypatch.delenv("PNEUMONIA_DATA_DIR", raising=False)
    monkeypatch.delenv("PNEUMONIA_QUICK", raising=False)
