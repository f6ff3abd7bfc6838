"""What only a GPU can check: mixed precision, a checkpoint written on CUDA and read on a
machine without one, and resuming on CUDA.

Every test here is marked ``cuda`` and skipped where torch sees no CUDA device (CI, most
laptops). ``benchmarks/gpu-check.sh`` runs them on a GPU; ``benchmarks/README.md`` has what
they printed there.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from helpers.config import Config
from helpers.data import class_weights
from helpers.loader import prepare_data
from helpers.runs import load_model_from_run
from helpers.train import run_epoch, start_training, train

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

TINY = Config().quick_mode().replace(pretrained="none", image_size=64, subset=160, epochs=3)
"""A from-scratch run small enough for seconds on a GPU, with dropout (drawn from the CUDA
generator) and augmentation."""

RESUME_LOSS_TOLERANCE = 1e-4
"""How far a resumed CUDA run's losses may be from an uninterrupted one's. With cuDNN's
deterministic algorithms (set in the test) the two runs do the same arithmetic, so any
difference is a resume bug; a lost CUDA generator state changes the dropout masks and moves
the losses by far more than this."""


@pytest.fixture()
def deterministic_cudnn(monkeypatch):
    """cuDNN's deterministic algorithms, for the length of one test."""
    monkeypatch.setattr(torch.backends.cudnn, "deterministic", True)
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)


def _one_training_epoch(demo_root: Path):
    """Train a fresh from-scratch model for one epoch of TINY on CUDA, built as ``train()``
    builds it, recording the dtype the first convolution computes in.
    Returns (weights before, model after, result, dtypes, the run's GradScaler)."""
    device = torch.device("cuda")
    data = prepare_data(TINY, demo_root, progress=False)
    loader = data.loader("train", TINY, device)
    run = start_training(TINY, class_weights(loader.targets.tolist()), device)
    model = run.model
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    dtypes: list[torch.dtype] = []
    model.features[0].register_forward_hook(lambda m, i, out: dtypes.append(out.dtype))
    result = run_epoch(
        model, loader, run.criterion, device, run.optimizer, run.scaler, TINY.grad_clip
    )
    return before, model, result, dtypes, run.scaler


def test_bfloat16_mixed_precision_trains(outputs, demo_root):
    """From compute capability 8.0 (this GPU's, when it has it): forward in bfloat16 under
    autocast, backward into float32 weights that all moved, no loss scaling."""
    if torch.cuda.get_device_capability() < (8, 0):
        pytest.skip("this GPU has no bfloat16 hardware")
    before, model, result, dtypes, scaler = _one_training_epoch(demo_root)
    assert scaler.is_enabled()
    assert set(dtypes) == {torch.bfloat16}
    assert np.isfinite(result.loss) and 0 < result.loss < 5
    for name, p in model.named_parameters():
        assert p.dtype == torch.float32, name
        assert torch.isfinite(p).all(), name
        assert not torch.equal(p.detach(), before[name]), f"{name} did not train"
    assert scaler.state_dict()["_growth_tracker"] == 0  # bfloat16 needs no loss scaling


def test_a_t4_trains_in_float16_with_the_grad_scaler(outputs, demo_root, monkeypatch):
    """On a T4 (compute capability 7.5) the forward runs in float16 and the loss is scaled.
    Faked here as a real T4 presents itself: capability (7, 5), while
    ``is_bf16_supported()`` still answers True (emulation), so the rule cannot lean on it."""
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *args, **kwargs: (7, 5))
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: True)
    before, model, result, dtypes, scaler = _one_training_epoch(demo_root)
    assert set(dtypes) == {torch.float16}
    assert np.isfinite(result.loss) and 0 < result.loss < 5
    # the scaler was used: it counted steps without overflow, or backed off after one
    state = scaler.state_dict()
    assert state["_growth_tracker"] > 0 or state["scale"] < 65536.0
    for name, p in model.named_parameters():
        assert torch.isfinite(p).all(), name
        assert not torch.equal(p.detach(), before[name]), f"{name} did not train"


def test_a_gpu_checkpoint_loads_where_there_is_no_gpu(outputs, demo_root, tmp_path):
    """``best.pt`` written by a CUDA run loads in a process that sees no GPU
    (``CUDA_VISIBLE_DEVICES=""``, with ``weights_only=True`` and ``map_location``): the same
    weights bit for bit, and the same probabilities up to float32 rounding."""
    result = train(
        TINY.replace(epochs=1), tmp_path / "run", demo_root, device="cuda", progress=False
    )
    assert json.loads((tmp_path / "run" / "config.json").read_text())["device"].startswith("cuda")
    torch.manual_seed(0)
    x = torch.randn(4, 3, TINY.image_size, TINY.image_size)
    torch.save(x, tmp_path / "x.pt")
    with torch.no_grad():
        on_gpu = torch.softmax(result.model.float().eval()(x.cuda()), 1).cpu()
    script = (
        "import sys, torch\n"
        "from helpers.runs import load_model_from_run\n"
        "assert not torch.cuda.is_available()\n"
        "model, _, _ = load_model_from_run(sys.argv[1], device='cpu')\n"
        "x = torch.load(sys.argv[2], weights_only=True)\n"
        "with torch.no_grad():\n"
        "    p = torch.softmax(model(x), 1)\n"
        "torch.save({'p': p, 'state': model.state_dict()}, sys.argv[3])\n"
    )
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    args = [sys.executable, "-c", script, str(tmp_path / "run"), str(tmp_path / "x.pt")]
    subprocess.run([*args, str(tmp_path / "cpu.pt")], env=env, check=True, timeout=300)
    on_cpu = torch.load(tmp_path / "cpu.pt", weights_only=True)
    for name, tensor in result.model.state_dict().items():
        assert torch.equal(tensor.cpu(), on_cpu["state"][name]), name
    assert torch.allclose(on_gpu, on_cpu["p"], atol=1e-4)
    model, _, _ = load_model_from_run(tmp_path / "run", device="cpu")  # here, too
    assert next(model.parameters()).device.type == "cpu"


def test_resume_on_cuda_equals_an_uninterrupted_run(
    outputs, demo_root, tmp_path, deterministic_cudnn
):
    """Stop a CUDA run after epoch 1, resume it, and get the uninterrupted run's history
    (losses within ``RESUME_LOSS_TOLERANCE``, learning rates equal) and predictions. The
    recipe has dropout, augmentation and an EMA of the weights, so the CUDA generator, the
    augmentation order and the average must all be restored."""
    config = TINY.replace(ema_decay=0.9)
    straight = train(config, tmp_path / "straight", demo_root, device="cuda", progress=False)
    train(config, tmp_path / "cut", demo_root, device="cuda", progress=False, stop_after=1)
    resumed = train(config, tmp_path / "cut", demo_root, device="cuda", progress=False, resume=True)
    a = straight.history.drop(columns="seconds")
    b = resumed.history.drop(columns="seconds")
    assert len(a) == len(b) == config.epochs
    losses = ["train_loss", "val_loss"]
    gap = (a[losses] - b[losses]).abs().to_numpy().max()
    print(f"largest loss difference, resumed vs uninterrupted on CUDA: {gap:.2e}")
    assert gap <= RESUME_LOSS_TOLERANCE
    pd.testing.assert_frame_equal(a.drop(columns=losses), b.drop(columns=losses))
