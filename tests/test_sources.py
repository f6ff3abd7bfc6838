"""Finding the dataset: argument, environment, project folder, Kaggle input, kagglehub, demo."""

from __future__ import annotations

import pytest
from layouts import tiny_layout

from helpers import sources
from helpers.data import DatasetError, scan
from helpers.sources import find_dataset


def test_find_dataset_order(tmp_path, monkeypatch):
    explicit = tiny_layout(tmp_path / "mine" / "chest_xray")
    assert find_dataset(explicit).source == "argument"
    monkeypatch.setenv("PNEUMONIA_DATA_DIR", str(explicit))
    assert find_dataset().source == "env"
    monkeypatch.setenv("PNEUMONIA_DATA_DIR", str(tmp_path / "nope"))
    with pytest.raises(DatasetError, match="no such folder"):
        find_dataset()
    monkeypatch.delenv("PNEUMONIA_DATA_DIR")
    project = tmp_path / "project"
    monkeypatch.setattr(sources, "project_root", lambda: project)
    kaggle = tmp_path / "kaggle_input"
    tiny_layout(kaggle / "chest-xray-pneumonia" / "chest_xray")
    monkeypatch.setattr(sources, "KAGGLE_INPUT", kaggle)
    assert find_dataset().source == "kaggle-input"
    tiny_layout(project / "data" / "chest_xray")
    assert find_dataset().source == "project"


def test_find_dataset_uses_kagglehub_when_online(tmp_path, monkeypatch):
    import sys
    import types

    monkeypatch.setattr(sources, "project_root", lambda: tmp_path / "project")
    monkeypatch.setattr(sources, "KAGGLE_INPUT", tmp_path / "no_kaggle")
    downloaded = tiny_layout(tmp_path / "hub" / "chest_xray")
    fake = types.SimpleNamespace(dataset_download=lambda handle: str(downloaded.parent))
    monkeypatch.setitem(sys.modules, "kagglehub", fake)
    monkeypatch.setattr(sources, "network_answers", lambda *a, **k: True)
    location = find_dataset()
    assert location.source == "kagglehub" and not location.is_demo

    def refuse(handle):
        raise RuntimeError("401 Client Error: Unauthorized")

    fake.dataset_download = refuse
    with pytest.raises(DatasetError, match="KAGGLE_USERNAME"):
        find_dataset()


def test_find_dataset_falls_back_to_demo_offline(tmp_path, monkeypatch):
    monkeypatch.setattr(sources, "project_root", lambda: tmp_path / "project")
    monkeypatch.setattr(sources, "KAGGLE_INPUT", tmp_path / "no_kaggle")
    monkeypatch.setattr(sources, "network_answers", lambda *a, **k: False)
    with pytest.warns(UserWarning, match="SYNTHETIC demo dataset"):
        location = find_dataset(demo_images=60)
    assert location.is_demo and location.source == "demo"
    assert scan(location.root).images.shape[0] == 60


def test_network_check_gives_up_after_its_timeout(monkeypatch):
    """A connection (name lookup included) that would answer only after 0.3 s counts as no
    network when the timeout is 0.1 s: the check never hangs on an offline resolver."""
    import contextlib
    import socket
    import time

    def slow_connection(*args, **kwargs):
        time.sleep(0.3)
        return contextlib.nullcontext()

    monkeypatch.setattr(socket, "create_connection", slow_connection)
    assert not sources.network_answers("example.org", 443, timeout=0.1)
    assert sources.network_answers("example.org", 443, timeout=3.0)


def test_a_relative_dataset_folder_is_recorded_absolute(tmp_path, monkeypatch):
    """``--data data/x`` names a different folder from another working directory: every
    location is resolved when it is made."""
    tiny_layout(tmp_path / "work" / "data" / "chest_xray")
    monkeypatch.chdir(tmp_path / "work")
    location = find_dataset("data/chest_xray")
    assert location.root == tmp_path.resolve() / "work" / "data" / "chest_xray"
    monkeypatch.setenv("PNEUMONIA_DATA_DIR", "./data/../data/chest_xray")
    assert find_dataset().root == location.root
    monkeypatch.chdir(tmp_path)
    assert scan(location.root).images.shape[0] == 6
