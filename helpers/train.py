"""The training engine: the article's schedule, with early stopping, checkpoints and resume.

Notebook 04 writes one training epoch out in plain PyTorch; :func:`run_epoch` is that epoch
(a test proves both give the same weights), plus mixed precision on a GPU. :func:`train`
runs it for every epoch of the article's schedule, with the original notebook's bugs fixed:

* the model is switched back to ``train()`` at the start of every epoch (the original
  called it once, so after the first validation it trained in eval mode);
* validation and test batches are never augmented;
* ``eta_min`` reaches the scheduler; the seed is used; F1 is computed over the whole epoch;
* early stopping watches a patient-grouped validation split, not 16 images.

Everything it writes goes into a run folder (:mod:`helpers.runs`); ``resume=True`` carries on
from ``last.pt`` with the same result as an uninterrupted run.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from sklearn.metrics import f1_score
from torch import nn

from helpers.config import CLASSES, Config
from helpers.data import class_weights
from helpers.fold import with_folded_prefix
from helpers.loader import BatchLoader, PreparedData, prepare_data
from helpers.model import PneumoniaNet, build_model, parameter_groups
from helpers.runs import (
    HISTORY_COLUMNS,
    RunError,
    check_compatible,
    load_checkpoint,
    model_checkpoint,
    restore_rng_state,
    rng_state,
    save_checkpoint,
    write_history,
    write_run_config,
)

# --- the pieces of the recipe ---------------------------------------------------------------


def pick_device(device: str | None = None) -> torch.device:
    """``device`` if given, else CUDA when available, else CPU."""
    if device:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


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


# --- one epoch --------------------------------------------------------------------------------


@dataclass
class EpochResult:
    """Per-image mean loss, accuracy and support-weighted F1 over one pass."""

    loss: float
    acc: float
    f1: float


def run_epoch(
    model: nn.Module,
    loader: BatchLoader,
    criterion: nn.Module,
    device: torch.device,
    optimizer: torch.optim.Optimizer | None = None,
    scaler: torch.amp.GradScaler | None = None,
    grad_clip: float | None = None,
    progress: Any = None,
    after_step: Any = None,
) -> EpochResult:
    """One pass over ``loader``: trains when ``optimizer`` is given, else evaluates.

    Training: ``model.train()``, then per batch forward, loss, ``zero_grad``, backward, clip
    (``grad_clip=None``: no clipping), step, then ``after_step()`` (the engine updates its
    weight average there). Evaluation: ``model.eval()`` under ``torch.no_grad()``. On CUDA
    the forward pass runs in mixed precision (bfloat16 where supported, else float16 with
    the ``scaler``). Loss is averaged per image; accuracy and F1 over all predictions.
    """
    training = optimizer is not None
    model.train(training)
    use_amp = device.type == "cuda"
    amp_dtype = torch.bfloat16 if use_amp and torch.cuda.is_bf16_supported() else torch.float16
    scaling = scaler is not None and scaler.is_enabled()
    total_loss, seen = 0.0, 0
    targets, predictions = [], []
    params = [p for p in model.parameters() if p.requires_grad]
    with torch.set_grad_enabled(training):
        for x, y in loader:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            with torch.autocast(device_type=device.type, dtype=amp_dtype, enabled=use_amp):
                logits = model(x)
                loss = criterion(logits.float(), y)
            if training:
                optimizer.zero_grad(set_to_none=True)
                (scaler.scale(loss) if scaling else loss).backward()
                if scaling:
                    scaler.unscale_(optimizer)
                if grad_clip is not None:
                    nn.utils.clip_grad_norm_(params, grad_clip)
                if scaling:
                    scaler.step(optimizer)
                    scaler.update()
                else:
                    optimizer.step()
                if after_step is not None:
                    after_step()
            total_loss += float(loss.detach()) * len(y)
            seen += len(y)
            targets.append(y.cpu())
            predictions.append(logits.detach().argmax(1).cpu())
            if progress is not None:
                progress.update(1)
    y_true = torch.cat(targets).numpy()
    y_pred = torch.cat(predictions).numpy()
    f1 = float(f1_score(y_true, y_pred, average="weighted", zero_division=0))
    return EpochResult(total_loss / seen, float((y_true == y_pred).mean()), f1)


# --- the run ----------------------------------------------------------------------------------


@dataclass
class TrainResult:
    """What a finished :func:`train` call returns; everything is also in ``run_dir``."""

    run_dir: Path
    model: PneumoniaNet
    history: pd.DataFrame
    best_epoch: int
    best_val_loss: float
    stopped_early: bool
    data: PreparedData


def train(
    config: Config,
    run_dir: str | Path,
    data_dir: str | Path | None = None,
    *,
    resume: bool = False,
    device: str | None = None,
    progress: bool = True,
    prepared: PreparedData | None = None,
    stop_after: int | None = None,
) -> TrainResult:
    """Train PneumoniaNet with ``config``'s recipe and write a run folder.

    ``resume=True`` continues from ``run_dir/last.pt`` (model, optimiser, scheduler, scaler,
    weight average, early-stopping state, random generators, history). ``stop_after`` ends
    the call after that many epochs in total, as an interruption would (used to test resuming).
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    dev = pick_device(device)
    data = prepared or prepare_data(config, data_dir, progress=progress)
    train_loader, val_loader = data.loader("train", config, dev), data.loader("val", config, dev)
    if not len(train_loader) or not len(val_loader):
        raise RunError(f"{data.location.root}: no training or validation images to train on")
    weights = class_weights(train_loader.targets.tolist())  # refuses a split missing a class
    criterion = weighted_loss(weights, config, dev)

    seed_everything(config.seed)
    model = build_model(config.pretrained, config.dropout, config.trainable_blocks).to(dev)
    if not model.frozen:
        use_scratch_batchnorm(model)
    model = to_channels_last(model, dev)
    optimizer, scheduler = make_optimizer(model, config)
    scaler = torch.amp.GradScaler("cuda", enabled=dev.type == "cuda")
    ema = make_ema(model, config)
    stopper = EarlyStopping(config.patience)
    parts = {"model": model, "optimizer": optimizer, "scheduler": scheduler, "scaler": scaler}
    history: list[dict[str, Any]] = []
    if resume and (run_dir / "last.pt").is_file():
        history = _restore(run_dir, config, dev, parts, ema, stopper)
    _write_config(run_dir, config, model, dev, data, weights)

    fast = with_folded_prefix(model)  # the same function, faster when a prefix is frozen
    kept = model if ema is None else ema.module  # the weights validated, saved and tested
    last_epoch = config.epochs if stop_after is None else min(config.epochs, stop_after)
    for epoch in range(len(history), last_epoch):
        if stopper.should_stop:  # a resumed run that had already stopped
            break
        started = time.perf_counter()
        lrs = {g["name"]: g["lr"] for g in optimizer.param_groups}
        train_loader.set_epoch(epoch)
        bar = _progress_bar(epoch, config, len(train_loader) + len(val_loader), progress)
        update = None if ema is None else (lambda: ema.update_parameters(model))
        fit = run_epoch(
            fast, train_loader, criterion, dev, optimizer, scaler, config.grad_clip, bar, update
        )
        val = run_epoch(fast if ema is None else kept, val_loader, criterion, dev, progress=bar)
        bar.close()
        scheduler.step()
        history.append(_history_row(epoch + 1, fit, val, lrs, time.perf_counter() - started))
        improved = stopper.step(val.loss, epoch + 1)
        if improved:
            save_checkpoint(run_dir / "best.pt", model_checkpoint(kept, config, epoch + 1))
        write_history(run_dir / "history.csv", history)
        _save_last(run_dir, config, epoch + 1, parts, ema, stopper)
        if progress:
            _print_epoch(history[-1], improved)
        if stopper.should_stop and progress:
            print(f"early stop: no better validation loss for {config.patience} epochs")

    best = load_checkpoint(run_dir / "best.pt", map_location=dev)
    model.load_state_dict(best["model"])
    model.eval()
    frame = pd.DataFrame(history, columns=HISTORY_COLUMNS)
    return TrainResult(
        run_dir, model, frame, stopper.best_epoch, stopper.best_loss, stopper.should_stop, data
    )


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
    sooner). GPU runs are not estimated: no GPU was measured.
    """
    rate = CPU_TRAINING_RATES["frozen" if frozen else "scratch"] * (256 / image_size) ** 2
    per_epoch = n_train / rate + n_val / (3 * rate)
    return {"seconds_per_epoch": per_epoch, "hours": per_epoch * epochs / 3600}


# --- the run's bookkeeping ----------------------------------------------------------------------


def _restore(
    run_dir: Path,
    config: Config,
    device: torch.device,
    parts: dict[str, Any],
    ema: torch.optim.swa_utils.AveragedModel | None,
    stopper: EarlyStopping,
) -> list[dict[str, Any]]:
    """Load ``last.pt`` into the training objects; return the history up to its epoch."""
    path = run_dir / "last.pt"
    state = load_checkpoint(path, map_location=device)
    check_compatible(state, config, path)
    for name, part in parts.items():
        part.load_state_dict(state[name])
    if ema is not None:
        ema.load_state_dict(state["ema"])
    stopper.load_state_dict(state)
    restore_rng_state(state)
    print(f"resuming {run_dir} after epoch {state['epoch']}")
    return pd.read_csv(run_dir / "history.csv").to_dict(orient="records")[: state["epoch"]]


def _save_last(
    run_dir: Path,
    config: Config,
    epoch: int,
    parts: dict[str, Any],
    ema: torch.optim.swa_utils.AveragedModel | None,
    stopper: EarlyStopping,
) -> None:
    """Write ``last.pt``: everything :func:`_restore` needs to carry on after ``epoch``."""
    state = model_checkpoint(parts["model"], config, epoch)
    state.update({name: part.state_dict() for name, part in parts.items()})
    state.update(ema=None if ema is None else ema.state_dict(), **stopper.state_dict())
    state.update(rng_state())
    save_checkpoint(run_dir / "last.pt", state)


def _write_config(
    run_dir: Path,
    config: Config,
    model: PneumoniaNet,
    device: torch.device,
    data: PreparedData,
    weights: dict[str, float],
) -> None:
    """``config.json``: the recipe, the weights, the device and the data of this run."""
    write_run_config(
        run_dir,
        {
            "config": config.to_dict(),
            "weights_used": model.weights_used,
            "frozen": model.frozen,
            "device": str(device),
            "data": {
                "root": str(data.location.root),
                "source": data.location.source,
                "is_demo": data.location.is_demo,
                "fingerprint": data.fingerprint(),
                "counts": {s: int(len(data.splits[s])) for s in ("train", "val", "test")},
                "skipped_files": int(len(data.scanned.problems)),
                "class_weights": weights,
            },
        },
    )


def _history_row(
    epoch: int, fit: EpochResult, val: EpochResult, lrs: dict[str, float], seconds: float
) -> dict[str, Any]:
    return {
        "epoch": epoch,
        "train_loss": fit.loss,
        "train_acc": fit.acc,
        "train_f1": fit.f1,
        "val_loss": val.loss,
        "val_acc": val.acc,
        "val_f1": val.f1,
        "lr_head": lrs.get("head"),
        "lr_backbone": lrs.get("backbone"),
        "seconds": round(seconds, 3),
    }


def _progress_bar(epoch: int, config: Config, steps: int, enabled: bool) -> Any:
    from tqdm.auto import tqdm

    return tqdm(
        total=steps, desc=f"epoch {epoch + 1}/{config.epochs}", leave=False, disable=not enabled
    )


def _print_epoch(row: dict[str, Any], improved: bool) -> None:
    print(
        f"epoch {row['epoch']:3d}  train loss {row['train_loss']:.4f} acc {row['train_acc']:.3f} "
        f"f1 {row['train_f1']:.3f}  val loss {row['val_loss']:.4f} acc {row['val_acc']:.3f} "
        f"f1 {row['val_f1']:.3f}  lr {row['lr_head']:.2e}  {row['seconds']:.1f}s"
        + (" *" if improved else "")
    )
