"""Shared fixtures: the demo dataset, a run folder made without training, one quick trained
run (for the slow tests), and the real data when it is there.

``-m "not slow"`` is the subset a contributor runs before every commit: no training run, no
notebook kernel, no child process, and no test over about a second (those few are marked
``slow`` with what takes the time). :func:`_fast_means_fast` enforces the first three: a test
not marked ``slow`` that starts a training epoch or a process fails, saying so.
"""

from __future__ import annotations

import multiprocessing.process
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

os.environ.setdefault("MPLBACKEND", "Agg")

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="session")
def demo_root(pytestconfig) -> Path:
    """The 600-image demo dataset (Kaggle layout, the notebooks' default), drawn once and
    shared with the notebook runs (the repository's ``conftest.py``)."""
    return pytestconfig.demo_dataset()


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


def pytest_configure(config) -> None:
    """Give torch the cores that are idle when the session starts, as the command line does
    (:func:`helpers.cpu.use_idle_cores`, an explicit call since nothing happens on import):
    on a busy 2-core machine torch's default of one thread per core made the fast tests take
    about twice as long (a thread waiting for a core holds up every parallel operation)."""
    from helpers.cpu import use_idle_cores

    use_idle_cores()


@dataclass
class MadeRun:
    """A run folder written as :func:`helpers.train.train` writes it, made without training."""

    run_dir: Path
    data: object  # helpers.loader.PreparedData
    config: object  # helpers.config.Config


@pytest.fixture(scope="session")
def made_run(demo_root, session_outputs, tmp_path_factory) -> MadeRun:
    """A run folder for the tests of evaluation, results, figures, predict and export, made in
    a second without training anything.

    ``train(..., stop_after=0)`` writes ``manifest.csv`` and ``config.json`` exactly as a run
    does. The model keeps its seeded random weights; only its BatchNorm statistics are taken
    from one forward pass over the training batches (no gradient, no optimiser), without
    which a random MobileNetV3's activations vanish and every image gets P = 0.5. Its
    predictions then differ from image to image (about 0.3-0.6 on the demo data). ``best.pt``
    holds it as epoch 1, and ``history.csv`` the losses it has on the training and validation
    batches. Tests must not change its folder: copy it first (``shutil.copytree``)."""
    import torch

    from helpers.config import Config
    from helpers.data import class_weights
    from helpers.recipe import weighted_loss
    from helpers.runs import model_checkpoint, save_checkpoint, write_history
    from helpers.train import run_epoch, train

    config = Config().quick_mode().replace(pretrained="none")
    run_dir = tmp_path_factory.mktemp("made-run") / "run"
    device = torch.device("cpu")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PNEUMONIA_OUTPUTS", str(session_outputs))
        started = train(config, run_dir, demo_root, progress=False, stop_after=0, device="cpu")
    model, data = started.model, started.data
    torch.manual_seed(config.seed)
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.reset_running_stats()
            module.momentum = None  # a plain average over the batches below
    model.train()
    with torch.no_grad():
        for x, _ in data.loader("train", config.replace(augment="article"), device):
            model(x)
    model.eval()
    save_checkpoint(run_dir / "best.pt", model_checkpoint(model, config, 1))
    criterion = weighted_loss(class_weights(data.rows("train")[1]), config, device)
    fit = run_epoch(model, data.loader("train", config, device), criterion, device)
    val = run_epoch(model, data.loader("val", config, device), criterion, device)
    row = {"epoch": 1, "train_loss": fit.loss, "train_acc": fit.acc, "train_f1": fit.f1,
           "val_loss": val.loss, "val_acc": val.acc, "val_f1": val.f1,
           "lr_head": config.scratch_lr, "lr_backbone": config.scratch_lr, "seconds": 0.0}  # fmt: skip
    write_history(run_dir / "history.csv", [row])
    return MadeRun(run_dir, data, config)


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
def _fast_means_fast(request, monkeypatch):
    """A test not marked ``slow`` may not start a training epoch, a process or a kernel."""
    if request.node.get_closest_marker("slow"):
        return
    name = request.node.nodeid
    if "quick_run" in request.fixturenames:
        raise AssertionError(f"{name} is not marked slow but uses quick_run, a training run")

    def refuse(what: str):
        def refused(*args, **kwargs):
            raise AssertionError(f"{name} is not marked slow but {what}")

        return refused

    import helpers.train

    monkeypatch.setattr(helpers.train, "_epoch", refuse("trains an epoch"))
    monkeypatch.setattr(subprocess.Popen, "__init__", refuse("starts a child process"))
    monkeypatch.setattr(
        multiprocessing.process.BaseProcess, "start", refuse("starts a child process")
    )


@pytest.fixture(autouse=True)
def _isolated_outputs(tmp_path, monkeypatch):
    """Every test writes outputs under its own temporary folder, never into the checkout."""
    monkeypatch.setenv("PNEUMONIA_OUTPUTS", str(tmp_path / "outputs"))
    monkeypatch.delenv("PNEUMONIA_DATA_DIR", raising=False)
    monkeypatch.delenv("PNEUMONIA_QUICK", raising=False)
