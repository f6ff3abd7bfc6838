"""The pieces of the article's recipe, each built in one place for the training engine.

The device, one seed for everything, BatchNorm for training from scratch, the memory layout,
the class-weighted loss, AdamW with its two parameter groups and the warm-restart schedule, an
optional average of the weights, early stopping, and a rough estimate of how long a run takes
on a CPU. Notebook 04 builds the loss, optimiser and schedule by hand; a test proves they are
these.
"""

from __future__ import annotations

import math
import random
from typing import Any

import numpy as np
import torch
from torch import nn

from helpers.config import CLASSES, Config
from helpers.model import PneumoniaNet, parameter_groups


def pick_device(device: str | None = None) -> torch.device:
    """``device`` if given, else CUDA when available, else CPU."""
    if device:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


BF16_MIN_CAPABILITY = (8, 0)
"""The first CUDA compute capability with bfloat16 hardware (Ampere). Below it PyTorch only
emulates bfloat16: its cuDNN convolutions require capability 8.0
(``supportsBFloat16ConvolutionWithCuDNNv8`` in ``aten/src/ATen/cuda/detail/CUDAHooks.cpp``,
checked by ``ConvParams::use_cudnn`` in ``aten/src/ATen/native/Convolution.cpp``), so a
bfloat16 convolution on a T4 falls back to slower kernels."""


def autocast_dtype(device: torch.device) -> torch.dtype | None:
    """The dtype training autocasts to on ``device``: None (float32) off CUDA.

    bfloat16 where the GPU has it in hardware (compute capability 8.0 and up: A100, L4,
    H100, RTX 30xx and later), float16 with a ``GradScaler`` below that (a T4 is 7.5).
    ``torch.cuda.is_bf16_supported()`` cannot decide this:
    with its default ``including_emulation=True`` it answers True on a T4, which can only
    hold bfloat16 tensors, not compute fast with them (``torch/cuda/__init__.py``; pytorch
    PR 148322 describes the case). ROCm builds report bfloat16 as supported on every AMD GPU
    (the same function), so they get it too.
    """
    if device.type != "cuda":
        return None
    if torch.version.hip:
        return torch.bfloat16
    index = device.index if device.index is not None else torch.cuda.current_device()
    if torch.cuda.get_device_capability(index) >= BF16_MIN_CAPABILITY:
        return torch.bfloat16
    return torch.float16


def seed_everything(seed: int) -> None:
    """One seed for Python, NumPy and torch (initialisation and dropout)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def use_scratch_batchnorm(model: nn.Module, momentum: float = 0.1) -> None:
    """From-scratch recipe: BatchNorm running statistics that keep up with training.

    torchvision's MobileNetV3 uses momentum 0.01, right for ImageNet weights whose
    statistics are already settled. From random initialisation the weights move fast and
    such slow running averages lag behind, so evaluation-mode predictions stay poor for many
    epochs. PyTorch's default 0.1 keeps up.
    """
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.momentum = momentum


def to_channels_last(model: nn.Module, device: torch.device) -> nn.Module:
    """The model in ``channels_last`` memory format on CUDA and on CPU (other devices: as is).

    Faster on both (tensor cores on CUDA; measured on CPU, see ``benchmarks/README.md``).
    Inputs can stay contiguous: the first convolution switches the format.
    """
    if device.type in ("cuda", "cpu"):
        return model.to(memory_format=torch.channels_last)
    return model


def weighted_loss(weights: dict[str, float], config: Config, device: torch.device) -> nn.Module:
    """The article's class-weighted cross-entropy (``weights`` from :func:`class_weights`)."""
    return nn.CrossEntropyLoss(
        weight=torch.tensor([weights[c] for c in CLASSES], device=device),
        label_smoothing=config.label_smoothing,
    )


def make_optimizer(
    model: PneumoniaNet, config: Config
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """AdamW over the two parameter groups, and cosine annealing with warm restarts."""
    optimizer = torch.optim.AdamW(
        parameter_groups(model, config),
        betas=config.betas,
        eps=config.eps,
        weight_decay=config.weight_decay,
    )
    scheduler = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(
        optimizer, T_0=config.t_0, T_mult=config.t_mult, eta_min=config.eta_min
    )
    return optimizer, scheduler


def make_ema(model: nn.Module, config: Config) -> torch.optim.swa_utils.AveragedModel | None:
    """An exponential moving average of the weights (``config.ema_decay`` per step), or None.

    Parameters and BatchNorm statistics alike are averaged (``use_buffers=True``).
    """
    if config.ema_decay <= 0:
        return None
    return torch.optim.swa_utils.AveragedModel(
        model,
        multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(config.ema_decay),
        use_buffers=True,
    )


class EarlyStopping:
    """Stop when the validation loss has not improved for ``patience`` epochs in a row."""

    def __init__(self, patience: int) -> None:
        self.patience = patience
        self.best_loss = math.inf
        self.best_epoch = 0
        self.bad_epochs = 0

    def step(self, val_loss: float, epoch: int) -> bool:
        """Record epoch ``epoch``'s validation loss; True when it is the best so far."""
        if val_loss < self.best_loss:
            self.best_loss, self.best_epoch, self.bad_epochs = val_loss, epoch, 0
            return True
        self.bad_epochs += 1
        return False

    @property
    def should_stop(self) -> bool:
        """True once ``patience`` epochs have passed without improvement."""
        return self.bad_epochs >= self.patience

    def state_dict(self) -> dict[str, Any]:
        return {
            "best_val_loss": self.best_loss,
            "best_epoch": self.best_epoch,
            "bad_epochs": self.bad_epochs,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best_loss = state["best_val_loss"]
        self.best_epoch = state["best_epoch"]
        self.bad_epochs = state["bad_epochs"]


# --- how long a run takes -------------------------------------------------------------------


CPU_TRAINING_RATES: dict[str, float] = {"frozen": 191.0, "scratch": 41.7}
"""Training images/second at 256x256 on a 2-core CPU, as measured by ``bench train`` (the
frozen ImageNet configuration, and the whole network from scratch; ``benchmarks/README.md``
gives the machine and the command). Used only to tell a reader roughly how long a run takes."""


def estimate_cpu_schedule(
    n_train: int, n_val: int, frozen: bool, epochs: int, image_size: int = 256
) -> dict[str, float]:
    """Rough wall time of a full training run on a 2-core CPU, from the measured rates.

    Seconds per epoch = training images / rate + validation images / (3 x rate) (evaluation
    needs no backward pass), scaled by the pixel count relative to 256x256. Returns seconds
    per epoch and hours for ``epochs`` epochs (the maximum; early stopping usually ends
    sooner). Not for GPUs: their rates depend on the card (`benchmarks/README.md` has an H200).
    """
    rate = CPU_TRAINING_RATES["frozen" if frozen else "scratch"] * (256 / image_size) ** 2
    per_epoch = n_train / rate + n_val / (3 * rate)
    return {"seconds_per_epoch": per_epoch, "hours": per_epoch * epochs / 3600}
