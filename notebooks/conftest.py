"""``pytest`` runs every notebook top to bottom (with nbmake's runner), in quick mode, and
notebooks 03-06 a second time with stand-in ImageNet weights.

No option is needed: a bare ``pytest`` collects ``notebooks/*.ipynb`` through this file
(``pytest --nbmake`` would collect them a second time, so this file then stands aside).
Quick mode is the default here (``PNEUMONIA_QUICK=1`` unless the environment already says
otherwise), and each notebook runs as on a fresh Colab machine: its own, empty outputs folder,
no cache and no trained run. Notebook 01 also finds its data by the usual search (the synthetic
demo dataset here); the others are given one demo dataset, drawn once and shared with the unit
tests (the repository's ``conftest.py``), as a Kaggle notebook
is given its attached dataset. Notebook 06 runs on notebook 05's outputs folder, as a reader
who goes on in the same session would, and so uses the run notebook 05 trained.

**The ImageNet pass** (items named ``...ipynb[imagenet]``): online, every learner gets the
ImageNet weights and so the article's recipe (frozen prefix, backbone learning rate 1e-6,
the article's augmentation), a branch the offline pass never takes. Here the weights cannot
be downloaded, so a stand-in is planted where torchvision's cache keeps them
(``$TORCH_HOME/hub/checkpoints/mobilenet_v3_small-047dcff4.pth``, a temporary ``TORCH_HOME``):
a state dict with torchvision's keys and shapes and freshly initialised values. The recipe's
code runs end to end in quick mode; its numbers mean nothing (the weights are not ImageNet's).
To keep the pass cheap, 04, 05 and 06 share one outputs folder there: 05 and 06 use the run
04 trained and its image cache, and the pass fails unless they say so and train nothing (a
reader going on in one session, or on Colab with ``KEEP_OUTPUTS``: the run is found, not
trained again).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
from nbmake.nb_run import NotebookRun
from nbmake.pytest_items import NotebookFailedException, NotebookFile, NotebookItem

SHARES_OUTPUTS_WITH = {"06_use_your_model": "05_evaluation"}
IMAGENET_SHARES_OUTPUTS_WITH = {
    "05_evaluation": "04_training",
    "06_use_your_model": "05_evaluation",
}
"""The ImageNet pass runs 04, 05 and 06 on one outputs folder, as a reader going on in one
session: 05 and 06 use the run 04 trained (the first pass covers notebooks opened alone)."""
IMAGENET_PASS = ("03", "04", "05", "06")
"""Notebooks run a second time with stand-in ImageNet weights (01 and 02 use no model)."""
IMAGENET_SUFFIX = "[imagenet]"
_folders: dict[str, str] = {}
_saved: dict[str, str | None] = {}


class ImagenetNotebookItem(NotebookItem):
    """The same notebook, run with stand-in ImageNet weights in a temporary torch hub cache;
    it fails unless the notebook said it uses ImageNet weights (``show_setup``'s line)."""

    def __init__(self, parent, filename: str, **kwargs) -> None:
        pytest.Item.__init__(self, parent.name + IMAGENET_SUFFIX, parent, **kwargs)
        self.filename = filename

    def repr_failure(self, excinfo, style=None):
        """This item's own checks fail with an ``AssertionError``: pytest's report shows its
        message (nbmake's would call it an "NBMAKE INTERNAL ERROR"); a failing cell is reported
        by nbmake, as for the first pass."""
        if excinfo.errisinstance(AssertionError):
            return pytest.Item.repr_failure(self, excinfo, style)
        return super().repr_failure(excinfo, style)

    def runtest(self) -> None:
        option = self.config.option
        run = NotebookRun(
            Path(self.config.rootdir) / self.filename,
            option.nbmake_timeout,
            verbose=bool(option.verbose),
            kernel=option.nbmake_kernel,
            find_import_errors=option.nbmake_find_import_errors,
        )
        result = run.execute()
        if result.error is not None:
            raise NotebookFailedException(result)
        printed = "".join(
            output.get("text", "")
            for cell in result.nb.cells
            if cell.cell_type == "code"
            for output in cell.get("outputs", [])
        )
        assert "weights: ImageNet" in printed, "the ImageNet pass did not use ImageNet weights"
        reuses = Path(self.filename).stem in IMAGENET_SHARES_OUTPUTS_WITH  # 05 and 06
        if reuses and "04_training" + IMAGENET_SUFFIX in _folders:  # 04's run, where 04 ran
            assert "using the run trained in notebook 04:" in printed, "04's run was not found"
            assert "no trained run in" not in printed, "04's run was trained again"


class SeriesFile(NotebookFile):
    """A notebook: one item, and for 03-06 a second one with stand-in ImageNet weights."""

    def collect(self):
        yield from super().collect()
        if Path(self.fspath).name.startswith(IMAGENET_PASS):
            yield ImagenetNotebookItem.from_parent(self, filename=str(Path(self.fspath)))


def pytest_collect_file(file_path: Path, parent):
    if file_path.suffix == ".ipynb" and not parent.config.option.nbmake:
        return SeriesFile.from_parent(parent, path=file_path)
    return None


def pytest_collection_modifyitems(items) -> None:
    for item in items:
        if isinstance(item, NotebookItem):
            item.add_marker("slow")


def _standin_torch_home() -> str:
    """A ``TORCH_HOME`` whose hub cache holds a stand-in for torchvision's ImageNet weights of
    MobileNetV3-Small: its file name, its keys and shapes, values from torchvision's own
    initialisation (seeded), so that ``pretrained="auto"`` finds "ImageNet weights"."""
    if "torch_home" not in _folders:
        import torch
        import torchvision

        from helpers.model import imagenet_weights

        home = Path(tempfile.mkdtemp(prefix="torch-home-"))
        file_name = Path(imagenet_weights().url).name
        assert file_name == "mobilenet_v3_small-047dcff4.pth", file_name
        torch.manual_seed(0)
        state = torchvision.models.mobilenet_v3_small(weights=None).state_dict()
        checkpoints = home / "hub" / "checkpoints"
        checkpoints.mkdir(parents=True)
        torch.save(state, checkpoints / file_name)
        _folders["torch_home"] = str(home)
    return _folders["torch_home"]


def pytest_runtest_setup(item) -> None:
    if not isinstance(item, NotebookItem):
        return
    imagenet = isinstance(item, ImagenetNotebookItem)
    suffix = IMAGENET_SUFFIX if imagenet else ""
    name = Path(item.filename).stem + suffix
    settings = {"PNEUMONIA_QUICK": os.environ.get("PNEUMONIA_QUICK") or "1"}
    shares = IMAGENET_SHARES_OUTPUTS_WITH if imagenet else SHARES_OUTPUTS_WITH
    shared = shares.get(Path(item.filename).stem)
    outputs = _folders.get(shared + suffix) if shared else None
    settings["PNEUMONIA_OUTPUTS"] = outputs or tempfile.mkdtemp(prefix=f"{name}-outputs-")
    _folders[name] = settings["PNEUMONIA_OUTPUTS"]
    if not name.startswith("01"):
        settings["PNEUMONIA_DATA_DIR"] = str(item.config.demo_dataset())  # ../conftest.py
    settings["TORCH_HOME"] = _standin_torch_home() if imagenet else _empty_torch_home()
    for key, value in settings.items():
        _saved[key] = os.environ.get(key)
        os.environ[key] = value


def _empty_torch_home() -> str:
    """A ``TORCH_HOME`` without weights, so that the first pass is offline whatever the
    machine's own torch cache holds."""
    if "empty_torch_home" not in _folders:
        _folders["empty_torch_home"] = tempfile.mkdtemp(prefix="torch-home-empty-")
    return _folders["empty_torch_home"]


def pytest_runtest_teardown(item) -> None:
    if not isinstance(item, NotebookItem):
        return
    for key, value in _saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    _saved.clear()
