"""The training engine: schedule, freezing, learning, checkpoints, resume and determinism."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from shutil import copytree
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
import torchvision

from helpers import cli, runs
from helpers import model as model_module
from helpers.config import Config
from helpers.data import DatasetError
from helpers.evaluate import evaluate_run
from helpers.loader import BatchLoader, prepare_data
from helpers.manifest import manifest_fingerprint, read_manifest, write_manifest
from helpers.recipe import EarlyStopping, make_optimizer
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


@pytest.mark.slow
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
    manifest = read_manifest(run)
    assert saved["data"]["fingerprint"] == manifest_fingerprint(manifest)
    assert saved["versions"]["torch"] == torch.__version__
    counts = manifest["split"].value_counts().to_dict()
    assert counts == saved["data"]["counts"]
    assert list(manifest["path"]) == quick_run.data.cache.paths  # what was trained on
    best = load_checkpoint(run / "best.pt")
    assert best["epoch"] == quick_run.best_epoch
    assert quick_run.best_val_loss == pytest.approx(history.val_loss.min())
    last = load_checkpoint(run / "last.pt")
    assert last["best"]["epoch"] == best["epoch"] and len(last["history"]) == QUICK.epochs


@pytest.mark.slow
def test_quick_run_learns_the_demo_signal(quick_run):
    assert _balanced_accuracy(quick_run.model, quick_run.data) >= 0.75


@pytest.mark.slow
def test_best_checkpoint_is_restored(quick_run):
    reloaded, config, state = load_model_from_run(quick_run.run_dir)
    assert config == QUICK and state["weights_used"] == "none"
    for name, tensor in quick_run.model.state_dict().items():
        assert torch.equal(tensor.cpu(), reloaded.state_dict()[name]), name


@pytest.mark.slow
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
    # The interrupted run was started for fewer epochs and is extended when resumed.
    shorter = config.replace(epochs=config.epochs - 1)
    train(shorter, tmp_path / "cut", demo_root, progress=False, stop_after=1)
    assert len(read_history(tmp_path / "cut")) == 1
    (tmp_path / "cut" / ".last.pt.abc123.tmp").write_bytes(b"half a checkpoint")
    resumed = train(config, tmp_path / "cut", progress=False, resume=True)  # its own manifest
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


@pytest.mark.slow
def test_resume_refuses_a_different_recipe_or_other_data(
    quick_run, demo_root, outputs, tmp_path, monkeypatch
):
    """Resuming compares the fields that change the model and the data's fingerprint; more
    epochs and another evaluation batch size are allowed; changed images are refused by name,
    moved ones are found by relative path. Another recipe is refused before any image is read
    (no cache is built at the new size)."""
    run_dir = copytree(quick_run.run_dir, tmp_path / "run")
    with monkeypatch.context() as mp:
        mp.setenv("PNEUMONIA_CACHE", str(tmp_path / "fresh-cache"))
        with pytest.raises(RunError, match="different config.*image_size"):
            train(QUICK.replace(image_size=32), run_dir, progress=False, resume=True)
        assert not (tmp_path / "fresh-cache").exists() or not any(
            (tmp_path / "fresh-cache").iterdir()
        )
    with pytest.raises(RunError, match="different config.*augment"):
        train(QUICK.replace(augment="robust"), run_dir, progress=False, resume=True)
    with pytest.raises(RunError, match="already trained 6 epochs"):
        train(QUICK.replace(epochs=4), run_dir, progress=False, resume=True)
    done = train(QUICK.replace(eval_batch_size=7), run_dir, progress=False, resume=True)
    assert len(done.history) == QUICK.epochs  # nothing left to train, nothing refused

    moved = copytree(demo_root, tmp_path / "moved")
    again = train(QUICK, run_dir, moved, progress=False, resume=True)
    assert again.data.splits["train"]["path"].iloc[0].startswith(str(moved.resolve()))
    val = read_manifest(run_dir).query("split == 'val'")["relpath"].iloc[0]
    (moved / val).write_bytes((moved / val).read_bytes() + b"\0")  # other bytes, same name
    with pytest.raises(DatasetError, match=f"{moved / val}: not the image this run used"):
        train(QUICK, run_dir, moved, progress=False, resume=True)
    # A manifest whose fingerprint is not the one last.pt recorded: other data.
    manifest = read_manifest(run_dir)
    manifest.loc[0, "patient"] = "someone-else"
    write_manifest(run_dir, manifest)
    with pytest.raises(RunError, match="trained on other data"):
        train(QUICK, run_dir, progress=False, resume=True)


KILLED = TINY.replace(epochs=2, patience=5)


@pytest.fixture(scope="module")
def straight_two_epochs(demo_root, session_outputs, tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PNEUMONIA_OUTPUTS", str(session_outputs))
        run = train(KILLED, tmp_path_factory.mktemp("straight") / "run", demo_root, progress=False)
    assert run.best_epoch == 2, "the kills below must hit an improving epoch"
    return run


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
    history = weighted.run_dir / "history.csv"
    written = history.stat().st_mtime_ns
    with pytest.raises(RunError, match="class weights"):
        train(config, weighted.run_dir, demo_root, progress=False, resume=True)
    assert history.stat().st_mtime_ns == written  # refused before anything was restored
    with pytest.raises(ValueError, match="not both"):
        train(config, tmp_path / "x", demo_root, weights=equal, criterion=criterion)
    with pytest.raises(ValueError, match="one value per class"):
        train(config, tmp_path / "x", demo_root, weights={"NORMAL": 1.0})


@pytest.mark.slow
@pytest.mark.parametrize("killed_writing", ["history.csv", "last.pt", "best.pt"])
def test_a_kill_between_the_epoch_files_leaves_files_that_agree(
    killed_writing, straight_two_epochs, outputs, demo_root, tmp_path, monkeypatch
):
    """Killed while writing any of epoch 2's files (which improves on epoch 1): ``best.pt``
    is always an epoch that ``history.csv`` has (it used to be written first, so a kill
    after it left a best epoch the history lacked), and a resume ends with the uninterrupted
    run's ``best.pt``: ``last.pt`` holds the best weights and rewrites it."""
    from helpers import train as train_module

    real_save, real_history = train_module.save_checkpoint, train_module.write_history

    def save(path, state):
        if path.name == killed_writing and state["epoch"] == 2:
            raise KeyboardInterrupt
        real_save(path, state)

    def history(path, rows):
        if path.name == killed_writing and len(rows) == 2:
            raise KeyboardInterrupt
        real_history(path, rows)

    monkeypatch.setattr(train_module, "save_checkpoint", save)
    monkeypatch.setattr(train_module, "write_history", history)
    cut = tmp_path / "cut"
    with pytest.raises(KeyboardInterrupt):
        train(KILLED, cut, demo_root, progress=False)
    monkeypatch.setattr(train_module, "save_checkpoint", real_save)
    monkeypatch.setattr(train_module, "write_history", real_history)
    assert load_checkpoint(cut / "best.pt")["epoch"] in set(read_history(cut)["epoch"])
    resumed = train(KILLED, cut, progress=False, resume=True)
    assert resumed.best_epoch == 2 and load_checkpoint(cut / "best.pt")["epoch"] == 2
    expected = load_checkpoint(straight_two_epochs.run_dir / "best.pt")["model"]
    for name, tensor in load_checkpoint(cut / "best.pt")["model"].items():
        assert torch.equal(tensor, expected[name]), name


def test_a_cpu_run_resumes_on_a_gpu(made_run, tmp_path, monkeypatch):
    """A CPU run saves its disabled loss scaler as ``{}``; resumed where CUDA is available (a
    Colab runtime switched from CPU to GPU: faked here) the scaler is enabled, and loading
    ``{}`` into it would raise "The source state dict is empty". The empty state is skipped."""
    from helpers import train as train_module
    from helpers.train import start_training

    weights = {"NORMAL": 2.0, "PNEUMONIA": 0.7}
    cpu = torch.device("cpu")
    on_cpu = start_training(made_run.config, weights, cpu)
    assert on_cpu.scaler.state_dict() == {}
    row = dict.fromkeys(HISTORY_COLUMNS, 0.0) | {"epoch": 1}
    train_module._save_last(tmp_path, made_run.config, 1, on_cpu, [row], None, "data")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    on_gpu = start_training(made_run.config, weights, cpu)
    on_gpu.scaler = torch.amp.GradScaler("cuda", enabled=True)  # as on a CUDA device
    assert on_gpu.scaler.is_enabled()
    history, best = train_module._restore(tmp_path, made_run.config, cpu, on_gpu, "data")
    assert [r["epoch"] for r in history] == [1] and best is None
    assert on_gpu.scaler.is_enabled() and on_gpu.scaler.get_scale() == 65536.0  # fresh
    for name, tensor in on_cpu.model.state_dict().items():
        assert torch.equal(on_gpu.model.state_dict()[name], tensor), name


def test_validation_loss_does_not_depend_on_the_batch_size():
    """With class weights, each batch's cross-entropy is a mean over the sum of its weights;
    the epoch's loss is sum of weighted losses / sum of weights, the same for any batching
    and equal to the loss over all images at once."""
    torch.manual_seed(0)
    x, y = torch.randn(200, 5), (torch.rand(200) < 0.7).long()
    model = torch.nn.Linear(5, 2)
    criterion = torch.nn.CrossEntropyLoss(weight=torch.tensor([1.94, 0.67]), label_smoothing=0.1)
    with torch.no_grad():
        exact = float(criterion(model(x), y))
    cpu = torch.device("cpu")
    for batch in (16, 64, 128, 7):
        batches = [(x[i : i + batch], y[i : i + batch]) for i in range(0, 200, batch)]
        assert run_epoch(model, batches, criterion, cpu).loss == pytest.approx(exact, rel=1e-6)
    unweighted = torch.nn.CrossEntropyLoss()
    with torch.no_grad():
        plain = float(unweighted(model(x), y))
    batches = [(x[i : i + 64], y[i : i + 64]) for i in range(0, 200, 64)]
    assert run_epoch(model, batches, unweighted, cpu).loss == pytest.approx(plain, rel=1e-6)


def test_early_stopping_waits_patience_epochs_after_the_best():
    stopper = EarlyStopping(patience=3)
    losses = [1.0, 0.8, 0.85, 0.8, 0.79, 0.9, 0.95, 0.81]
    improved = [stopper.step(loss, epoch) for epoch, loss in enumerate(losses, start=1)]
    assert improved == [True, True, False, False, True, False, False, False]
    assert stopper.should_stop and stopper.best_epoch == 5 and stopper.best_loss == 0.79
    again = EarlyStopping(patience=3)
    again.load_state_dict(stopper.state_dict())
    assert again.should_stop and again.best_epoch == 5


def test_train_stops_early_and_keeps_the_best_epoch(made_run, tmp_path, monkeypatch):
    """The loop ends ``patience`` epochs after the best validation loss and returns the best
    epoch's weights (epochs faked: each returns a set validation loss, nothing is trained)."""
    from helpers import train as train_module

    losses = iter([0.9, 0.7, 0.8, 0.75, 0.72, 0.71, 0.5])

    def fake_epoch(run, fast, train_loader, val_loader, epoch, config, device, progress):
        with torch.no_grad():
            next(run.model.parameters()).add_(1.0)  # each epoch's weights differ
        row = dict.fromkeys(HISTORY_COLUMNS, 0.0)
        return row | {"epoch": epoch + 1, "val_loss": next(losses)}

    monkeypatch.setattr(train_module, "_epoch", fake_epoch)
    config = made_run.config.replace(patience=4, epochs=20)
    (tmp_path / "run").mkdir()  # the input check's statistics, as made_run measured them
    shutil.copy(made_run.run_dir / "input-stats.json", tmp_path / "run")
    result = train(config, tmp_path / "run", prepared=made_run.data, progress=False)
    assert list(result.history["epoch"]) == [1, 2, 3, 4, 5, 6]
    assert result.stopped_early and result.best_epoch == 2
    best = load_checkpoint(tmp_path / "run" / "best.pt")
    assert best["epoch"] == 2
    first = next(iter(best["model"]))
    assert torch.equal(result.model.state_dict()[first], best["model"][first])


def test_epoch_without_clipping(made_run):
    """``grad_clip=None`` trains without clipping (it used to crash)."""
    model, config, _ = load_model_from_run(made_run.run_dir)
    data = made_run.data
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
    assert len(data.manifest) == 60 and not data.manifest["path"].str.contains("broken").any()


@pytest.mark.slow
def test_cli_quick_train(outputs, demo_root, tmp_path):
    env = {"PNEUMONIA_OUTPUTS": str(outputs), "PATH": "/usr/bin:/bin"}
    run = subprocess.run(
        [sys.executable, "-m", "helpers", "train", "--data", str(demo_root), "--out",
         str(tmp_path / "cli"), "--quick", "--epochs", "1", "--pretrained", "none",
         "--image-size", "32", "--demo"],
        capture_output=True, text=True, env=env,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    assert "best epoch 1" in run.stdout
    assert {p.name for p in (tmp_path / "cli").iterdir()} >= {
        "history.csv",
        "config.json",
        "best.pt",
    }


def test_cli_train_names_a_missing_data_folder(tmp_path, capsys):
    argv = ["train", "--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "x"), "--quick"]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert "no such folder" in err and "Traceback" not in err and not (tmp_path / "x").exists()


@pytest.mark.slow
def test_cli_train_records_where_its_data_came_from(demo_root, outputs, tmp_path, monkeypatch):
    """The dataset is found once, and the run records how: here from ``PNEUMONIA_DATA_DIR``
    ("env"), not the "argument" a second search on the found folder would say."""
    monkeypatch.setenv("PNEUMONIA_DATA_DIR", str(demo_root))
    out = tmp_path / "run"
    argv = ["train", "--out", str(out), "--quick", "--epochs", "1", "--image-size", "32"]
    assert cli.main([*argv, "--pretrained", "none", "--demo"]) == 0
    data = json.loads((out / "config.json").read_text())["data"]
    assert data["source"] == "env" and data["root"] == str(demo_root.resolve())


def test_cli_train_ignores_the_notebooks_switch_and_prints_its_recipe(
    demo_root, tmp_path, monkeypatch, capsys
):
    """A leftover ``PNEUMONIA_QUICK=1`` (the notebooks' switch) does not turn ``train`` into a
    quick run: only ``--quick`` does, and the recipe is printed before anything starts."""
    from helpers import train as train_module

    trained = []

    def record(config, run_dir, *args, **kwargs):
        trained.append(config)
        return SimpleNamespace(history=pd.DataFrame(), run_dir=run_dir)

    monkeypatch.setattr(train_module, "train", record)
    monkeypatch.setenv("PNEUMONIA_QUICK", "1")
    argv = ["train", "--data", str(demo_root), "--out", str(tmp_path / "r"), "--demo"]
    cli.main([*argv, "--pretrained", "none"])
    out = capsys.readouterr().out
    assert trained[0] == Config().for_weights("none") and not trained[0].quick
    assert "PNEUMONIA_QUICK is set" in out and "recipe: full, 256 px, weights none" in out
    cli.main([*argv, "--pretrained", "none", "--quick"])
    assert trained[1] == Config().for_weights("none").quick_mode()
    assert "recipe: quick, 64 px" in capsys.readouterr().out


def test_cli_train_refuses_the_synthetic_demo_without_demo(demo_root, tmp_path, capsys):
    """Trained on the demo dataset only when asked: found by the search or given with
    ``--data``, it is refused without ``--demo`` before anything is written."""
    out = tmp_path / "run"
    assert cli.main(["train", "--data", str(demo_root), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "SYNTHETIC demo" in err and "--demo" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_cli_train_without_data_refuses_before_generating_the_demo(monkeypatch, tmp_path, capsys):
    """With no dataset anywhere, ``train`` without ``--demo`` stops in one line naming
    ``--demo``, before the synthetic dataset is generated or its banner printed."""
    from helpers import sources

    monkeypatch.delenv("PNEUMONIA_DATA_DIR", raising=False)
    monkeypatch.setenv("PNEUMONIA_OUTPUTS", str(tmp_path / "outputs"))
    monkeypatch.setattr(sources, "project_root", lambda: tmp_path / "checkout")
    monkeypatch.setattr(sources, "_kaggle_input_dataset", lambda: None)
    monkeypatch.setattr(sources, "_kagglehub_available", lambda: False)
    out = tmp_path / "run"
    assert cli.main(["train", "--out", str(out), "--pretrained", "none"]) == 2
    err = capsys.readouterr().err
    assert "real dataset was not found" in err and "--demo" in err
    assert "SYNTHETIC demo dataset in" not in err  # no banner: nothing was generated
    assert not (tmp_path / "outputs" / "demo-data").exists() and not out.exists()


def test_cli_train_names_a_bad_setting(tmp_path, capsys):
    argv = ["train", "--out", str(tmp_path / "r"), "--pretrained", "none", "--image-size", "16"]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert "Config.image_size=16" in err and ">= 32" in err and not (tmp_path / "r").exists()


@pytest.mark.slow
def test_a_run_trained_on_a_relative_path_is_evaluated_from_another_folder(
    outputs, demo_root, tmp_path, monkeypatch
):
    """Trained with ``--data demo`` (relative) in one folder, evaluated from another: the run
    folder recorded where its data is, so the validation threshold is found, not 0.5."""
    shutil.copytree(demo_root, tmp_path / "work" / "demo")
    monkeypatch.chdir(tmp_path / "work")
    assert cli.main(["train", "--data", "demo", "--out", "run", "--quick", "--epochs", "1",
                     "--pretrained", "none", "--image-size", "32", "--demo"]) == 0  # fmt: skip
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    metrics = evaluate_run(tmp_path / "work" / "run", progress=False, n_resamples=20)
    assert not metrics["val_threshold"]["source"].startswith("fallback")
    assert metrics["data_root"] == str((tmp_path / "work" / "demo").resolve())
