"""The training engine: schedule, freezing, learning, checkpoints, resume and determinism."""

from __future__ import annotations

import json
import subprocess
import sys
from shutil import copytree

import numpy as np
import pandas as pd
import pytest
import torch
import torchvision

from helpers import model as model_module
from helpers import runs
from helpers.config import Config
from helpers.evaluate import evaluate_run
from helpers.loader import BatchLoader, prepare_data
from helpers.recipe import make_optimizer
from helpers.runs import (
    HISTORY_COLUMNS,
    RunError,
    load_checkpoint,
    load_model_from_run,
    read_history,
)
from helpers.train import run_epoch, train

QUICK = Config().quick_mode().replace(pretrained="none")
TINY = QUICK.replace(image_size=32, subset=120, epochs=3)


def _balanced_accuracy(model, data, split="val"):
    indices, targets = data.rows(split)
    loader = BatchLoader(data.cache, indices, targets, 64, shuffle=False, augment=False, seed=0)
    model.eval()
    with torch.inference_mode():
        pred = torch.cat([model(x).argmax(1) for x, _ in loader]).numpy()
    y = np.asarray(targets)
    return float(np.mean([(pred[y == c] == c).mean() for c in (0, 1)]))


def test_quick_run_writes_the_run_folder(quick_run):
    run = quick_run.run_dir
    for name in ("config.json", "history.csv", "best.pt", "last.pt"):
        assert (run / name).is_file(), name
    assert not list(run.glob(".*.tmp"))  # no temporary files left
    history = read_history(run)
    assert list(history.columns) == HISTORY_COLUMNS
    assert list(history.epoch) == list(range(1, QUICK.epochs + 1))
    saved = json.loads((run / "config.json").read_text())
    assert saved["config"]["image_size"] == QUICK.image_size
    assert saved["weights_used"] == "none" and saved["data"]["is_demo"] is True
    assert (
        len(saved["data"]["fingerprint"]) == 16 and saved["versions"]["torch"] == torch.__version__
    )
    best = load_checkpoint(run / "best.pt")
    assert best["epoch"] == quick_run.best_epoch
    assert quick_run.best_val_loss == pytest.approx(history.val_loss.min())


def test_quick_run_learns_the_demo_signal(quick_run):
    assert _balanced_accuracy(quick_run.model, quick_run.data) >= 0.75


def test_best_checkpoint_is_restored(quick_run):
    reloaded, config, state = load_model_from_run(quick_run.run_dir)
    assert config == QUICK and state["weights_used"] == "none"
    for name, tensor in quick_run.model.state_dict().items():
        assert torch.equal(tensor.cpu(), reloaded.state_dict()[name]), name


def test_warm_restart_schedule_in_history(quick_run):
    """The engine logs the rate each epoch used: a warm restart after epoch 5 (T_0=5)."""
    lr = quick_run.history.lr_head.to_numpy()
    restarts = [i for i in range(1, len(lr)) if lr[i] > lr[i - 1]]
    assert restarts == [5]
    assert lr[0] == lr[5] == pytest.approx(QUICK.scratch_lr)
    # within a cycle the rate follows the cosine down towards eta_min
    t = np.arange(5)
    expected = QUICK.eta_min + (QUICK.scratch_lr - QUICK.eta_min) * (1 + np.cos(np.pi * t / 5)) / 2
    np.testing.assert_allclose(lr[:5], expected, rtol=1e-6)


def test_schedule_restarts_at_epochs_6_16_and_36():
    """T_0=5, T_mult=2, stepped once per epoch: cycles of 5, 10 and 20 epochs. The lowest head
    rates (last epoch of each cycle) stay far above eta_min: about 9.5e-4, 2.5e-4, 6.2e-5."""
    from helpers.model import PneumoniaNet

    optimizer, scheduler = make_optimizer(PneumoniaNet(frozen=True), Config())
    lr = []
    for _ in range(36):
        lr.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    epochs = [i + 1 for i in range(1, 36) if lr[i] > lr[i - 1]]
    assert epochs == [6, 16, 36]
    lows = [lr[4], lr[14], lr[34]]  # epochs 5, 15 and 35
    np.testing.assert_allclose(lows, [9.55e-4, 2.45e-4, 6.16e-5], rtol=0.01)


@pytest.fixture
def fake_imagenet(tmp_path, monkeypatch):
    """Random 'ImageNet' weights saved where torchvision's cache would hold the real ones."""
    torch.manual_seed(0)
    state = torchvision.models.mobilenet_v3_small().state_dict()
    path = tmp_path / "torch_home" / "hub" / "checkpoints" / "mobilenet_v3_small-047dcff4.pth"
    path.parent.mkdir(parents=True)
    torch.save(state, path)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.setattr(model_module, "weights_cache_path", lambda: path, raising=False)
    return state


@pytest.mark.slow
def test_frozen_layers_do_not_change(outputs, demo_root, tmp_path, fake_imagenet, monkeypatch):
    monkeypatch.setenv("PNEUMONIA_OUTPUTS", str(outputs))
    config = QUICK.replace(pretrained="imagenet", epochs=2, subset=120)
    result = train(config, tmp_path / "frozen", demo_root, progress=False)
    assert result.model.weights_used == "imagenet" and result.model.frozen
    after = result.model.state_dict()
    n_frozen = result.model.n_frozen
    changed, unchanged = [], []
    for name, param in result.model.named_parameters():
        original = fake_imagenet.get(name)
        if original is None:  # the new head
            continue
        same = torch.equal(after[name].cpu(), original)
        (unchanged if same else changed).append((name, param.requires_grad))
    assert all(not trainable for _, trainable in unchanged)
    assert all(trainable for _, trainable in changed)
    assert {int(n.split(".")[1]) for n, _ in changed} == set(range(n_frozen, n_frozen + 2))
    # BatchNorm statistics of the frozen prefix stay as loaded, too
    for name, buffer in result.model.named_buffers():
        if (
            name.startswith("features.")
            and int(name.split(".")[1]) < n_frozen
            and name in fake_imagenet
        ):
            assert torch.equal(buffer.cpu(), fake_imagenet[name]), name


@pytest.mark.slow
def test_resume_after_interruption_equals_uninterrupted_run(outputs, demo_root, tmp_path):
    """Kill after epoch 1 (``stop_after``), leave a half-written checkpoint as a kill during a
    write would, resume, and get the same history, weights and metrics as a straight run.

    The straight run is also a second run of the same command, so this checks determinism
    too: only the wall-clock ``seconds`` column may differ. The recipe includes a weight
    average (EMA) and label smoothing, so their state is resumed as well.
    """
    config = TINY.replace(ema_decay=0.9, label_smoothing=0.1)
    straight = train(config, tmp_path / "straight", demo_root, progress=False)
    train(config, tmp_path / "cut", demo_root, progress=False, stop_after=1)
    assert len(read_history(tmp_path / "cut")) == 1
    (tmp_path / "cut" / ".last.pt.abc123.tmp").write_bytes(b"half a checkpoint")
    resumed = train(config, tmp_path / "cut", demo_root, progress=False, resume=True)
    a = straight.history.drop(columns="seconds")
    b = resumed.history.drop(columns="seconds")
    pd.testing.assert_frame_equal(a, b, check_exact=True)
    for name, tensor in straight.model.state_dict().items():
        assert torch.equal(tensor, resumed.model.state_dict()[name]), name
    first = evaluate_run(straight.run_dir, progress=False, n_resamples=100)
    second = evaluate_run(resumed.run_dir, progress=False, n_resamples=100)
    assert first == second


def test_resume_restores_the_cuda_generators_too(monkeypatch):
    """Dropout on a GPU draws from the CUDA generator: resume must save and restore it.
    CUDA is faked here, so the logic is tested on any machine."""
    saved_states = [torch.tensor([1, 2, 3], dtype=torch.uint8)]
    restored = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: saved_states)
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", restored.append)
    state = runs.rng_state()
    assert state["cuda_rng"] is saved_states
    assert torch.equal(state["torch_rng"], torch.get_rng_state())
    runs.restore_rng_state(state)
    assert restored == [saved_states]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    runs.restore_rng_state(state)  # a CUDA checkpoint resumed on a CPU: CPU state only
    assert restored == [saved_states]


def test_resume_refuses_a_different_recipe(quick_run, demo_root, outputs, tmp_path):
    run_dir = copytree(quick_run.run_dir, tmp_path / "run")
    with pytest.raises(RunError, match="different config.*epochs"):
        train(QUICK.replace(epochs=8), run_dir, demo_root, progress=False, resume=True)
    with pytest.raises(RunError, match="image_size"):
        train(QUICK.replace(image_size=32), run_dir, demo_root, progress=False, resume=True)


@pytest.mark.slow
def test_train_takes_class_weights_or_a_criterion(outputs, demo_root, tmp_path):
    """The loss ``train()`` uses is the one it is given: equal class weights give another run
    than the balanced default, a criterion with those weights the same run as the weights, and
    ``config.json`` records the weights the loss used. A resumed run must keep its loss."""
    config = TINY.replace(epochs=2)
    equal = {"NORMAL": 1.0, "PNEUMONIA": 1.0}

    def recorded(result):
        return json.loads((result.run_dir / "config.json").read_text())["data"]["class_weights"]

    default = train(config, tmp_path / "default", demo_root, progress=False)
    weighted = train(config, tmp_path / "equal", demo_root, progress=False, weights=equal)
    criterion = torch.nn.CrossEntropyLoss(weight=torch.tensor([1.0, 1.0]))
    given = train(config, tmp_path / "criterion", demo_root, progress=False, criterion=criterion)
    assert not np.array_equal(default.history.train_loss, weighted.history.train_loss)
    pd.testing.assert_frame_equal(
        weighted.history.drop(columns="seconds"), given.history.drop(columns="seconds")
    )
    assert recorded(weighted) == recorded(given) == equal
    assert recorded(default)["NORMAL"] > 1 > recorded(default)["PNEUMONIA"]
    plain = train(
        config.replace(epochs=1), tmp_path / "plain", demo_root, progress=False,
        criterion=torch.nn.CrossEntropyLoss(),
    )  # fmt: skip
    assert recorded(plain) is None
    with pytest.raises(RunError, match="class weights"):
        train(config, weighted.run_dir, demo_root, progress=False, resume=True)
    with pytest.raises(ValueError, match="not both"):
        train(config, tmp_path / "x", demo_root, weights=equal, criterion=criterion)
    with pytest.raises(ValueError, match="one value per class"):
        train(config, tmp_path / "x", demo_root, weights={"NORMAL": 1.0})


def test_epoch_without_clipping(quick_run):
    """``grad_clip=None`` trains without clipping (it used to crash)."""
    model, config, _ = load_model_from_run(quick_run.run_dir)
    data = quick_run.data
    indices, targets = data.rows("train")
    loader = BatchLoader(
        data.cache, indices[:32], targets[:32], 16, shuffle=True, augment=False, seed=0
    )
    optimizer, _ = make_optimizer(model, config)
    before = [p.detach().clone() for p in model.parameters()]
    criterion = torch.nn.CrossEntropyLoss()
    result = run_epoch(model, loader, criterion, torch.device("cpu"), optimizer, grad_clip=None)
    assert np.isfinite(result.loss)
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


def test_checkpoint_errors_are_clear(tmp_path):
    with pytest.raises(RunError, match="checkpoint not found"):
        load_checkpoint(tmp_path / "best.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(RunError, match="not a readable checkpoint"):
        load_checkpoint(tmp_path / "junk.pt")
    torch.save({"format_version": 1, "arch": "resnet18"}, tmp_path / "other.pt")
    with pytest.raises(RunError, match="architecture 'resnet18'"):
        load_checkpoint(tmp_path / "other.pt")


def test_prepare_data_skips_unreadable_files(outputs, tmp_path):
    from helpers.demo import make_demo_dataset

    root = make_demo_dataset(tmp_path / "d", n_images=60, seed=2)
    (root / "train" / "NORMAL" / "broken.jpeg").write_bytes(b"garbage")
    data = prepare_data(QUICK.replace(val_split=0.25), root, progress=False)
    assert len(data.scanned.problems) == 1
    assert all("broken" not in p for p in data.splits["train"].path)


@pytest.mark.slow
def test_cli_quick_train(outputs, demo_root, tmp_path):
    env = {"PNEUMONIA_OUTPUTS": str(outputs), "PATH": "/usr/bin:/bin"}
    run = subprocess.run(
        [sys.executable, "-m", "helpers", "train", "--data", str(demo_root), "--out",
         str(tmp_path / "cli"), "--quick", "--epochs", "1", "--pretrained", "none",
         "--image-size", "32"],
        capture_output=True, text=True, env=env,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    assert "best epoch 1" in run.stdout
    assert {p.name for p in (tmp_path / "cli").iterdir()} >= {
        "history.csv",
        "config.json",
        "best.pt",
    }
    bad = subprocess.run(
        [sys.executable, "-m", "helpers", "train", "--data", str(tmp_path / "nowhere"), "--out",
         str(tmp_path / "x"), "--quick"],
        capture_output=True, text=True, env=env,
    )  # fmt: skip
    assert bad.returncode == 2 and "no such folder" in bad.stderr and "Traceback" not in bad.stderr
