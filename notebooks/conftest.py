"""``pytest`` runs every notebook top to bottom (with nbmake's runner), in quick mode.

No option is needed: a bare ``pytest`` collects ``notebooks/*.ipynb`` through this file
(``pytest --nbmake`` would collect them a second time, so this file then stands aside).
Quick mode is the default here (``PNEUMONIA_QUICK=1`` unless the environment already says
otherwise), and each notebook runs as on a fresh Colab machine: its own, empty outputs folder,
no cache and no trained run. Notebook 01 also finds its data by the usual search (the synthetic
demo dataset here); the others are given one demo dataset generated once, as a Kaggle notebook
is given its attached dataset. Notebook 06 runs on notebook 05's outputs folder, as a reader
who goes on in the same session would, and so uses the run notebook 05 trained.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from nbmake.pytest_items import NotebookFile, NotebookItem

SHARES_OUTPUTS_WITH = {"06_use_your_model": "05_evaluation"}
_folders: dict[str, str] = {}
_saved: dict[str, str | None] = {}


def pytest_collect_file(file_path: Path, parent):
    if file_path.suffix == ".ipynb" and not parent.config.option.nbmake:
        return NotebookFile.from_parent(parent, path=file_path)
    return None


def pytest_collection_modifyitems(items) -> None:
    for item in items:
        if isinstance(item, NotebookItem):
            item.add_marker("slow")


def _demo_data() -> str:
    """One demo dataset for the session (generated on first use)."""
    if "data" not in _folders:
        from helpers.demo import make_demo_dataset

        root = Path(tempfile.mkdtemp(prefix="notebook-demo-"))
        _folders["data"] = str(make_demo_dataset(root, n_images=600, seed=7))
    return _folders["data"]


def pytest_runtest_setup(item) -> None:
    if not isinstance(item, NotebookItem):
        return
    name = Path(item.filename).stem
    settings = {"PNEUMONIA_QUICK": os.environ.get("PNEUMONIA_QUICK") or "1"}
    shared = SHARES_OUTPUTS_WITH.get(name)
    outputs = _folders.get(shared) if shared else None
    settings["PNEUMONIA_OUTPUTS"] = outputs or tempfile.mkdtemp(prefix=f"{name}-outputs-")
    _folders[name] = settings["PNEUMONIA_OUTPUTS"]
    if not name.startswith("01"):
        settings["PNEUMONIA_DATA_DIR"] = _demo_data()
    for key, value in settings.items():
        _saved[key] = os.environ.get(key)
        os.environ[key] = value


def pytest_runtest_teardown(item) -> None:
    if not isinstance(item, NotebookItem):
        return
    for key, value in _saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    _saved.clear()
