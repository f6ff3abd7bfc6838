"""Shared fixtures: the demo dataset and one quick trained run, each built once per session,
and the real data when it is there."""

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
def session_outputs(tmp_path_factory) -> Path:
    """An outputs folder shared by the session's training runs, so images decode once."""
    return tmp_path_factory.mktemp("session-outputs")


@pytest.fixture()
def outputs(session_outputs, monkeypatch) -> Path:
    """Point ``PNEUMONIA_OUTPUTS`` at the session's folder, so that a test's training runs
    reuse its image caches instead of decoding the images again."""
    monkeypatch.setenv("PNEUMONIA_OUTPUTS", str(session_outputs))
    return session_outputs


@pytest.fixture(scope="session")
def quick_run(demo_root, session_outputs, tmp_path_factory):
    """The quick recipe (from scratch) trained once on the demo data, for every test that
    needs a trained run. Tests must not change its folder: copy it first (``shutil.copytree``)."""
    from helpers.config import Config
    from helpers.train import train

    recipe = Config().quick_mode().replace(pretrained="none")
    run_dir = tmp_path_factory.mktemp("quick-run") / "run"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PNEUMONIA_OUTPUTS", str(session_outputs))
        return train(recipe, run_dir, demo_root, progress=False)


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
