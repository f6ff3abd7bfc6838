"""The training engine: the article's schedule, run folders, checkpoints and resume.

One call, :func:`train`, does what the article's trainer did, with its bugs fixed:

* the model is switched back to ``train()`` at the start of every epoch (the original
  called it once, so after the first validation it trained in eval mode);
* validation and test batches are never augmented;
* ``eta_min`` reaches the scheduler; the seed is used; F1 is computed over the whole epoch;
* early stopping watches a patient-grouped validation split, not 16 images.

A run folder holds ``config.json``, ``history.csv``, ``best.pt`` and ``last.pt``: the only
things evaluation needs. Every file is written to a temporary name and renamed, so a run
killed at any moment leaves the previous complete file, and ``resume=True`` carries on from
``last.pt`` with the same result as an uninterrupted run.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import platform
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from helpers.config import CLASSES, Config, outputs_dir
from helpers.data import DatasetLocation, ScanResult, class_weights, find_dataset, make_splits, scan
from helpers.files import atomic_write_bytes, atomic_write_text
from helpers.model import PneumoniaNet, build_model, parameter_groups
from helpers.preprocess import BatchLoader, ImageCache, build_cache

CHECKPOINT_FORMAT = 1
ARCH = "mobilenet_v3_small/pneumonianet"
HISTORY_COLUMNS = [
    "epoch",
    "train_loss",
    "train_acc",
    "train_f1",
    "val_loss",
    "val_acc",
    "val_f1",
    "lr_head",
    "lr_backbone",
    "seconds",
]


class RunError(RuntimeError):
    """A run folder or checkpoint that cannot be used; the message says which and why."""


# --- checkpoints ---------------------------------------------------------------------------


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Save a checkpoint (tensors and plain values only) atomically."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint safely (``weights_only=True``: no code runs from the file)."""
    path = Path(path)
    if not path.is_file():
        raise RunError(f"{path}: checkpoint not found")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:
        raise RunError(f"{path}: not a readable checkpoint ({err})") from err
    if not isinstance(state, dict) or state.get("format_version") != CHECKPOINT_FORMAT:
        raise RunError(f"{path}: not a checkpoint of this project (format {CHECKPOINT_FORMAT})")
    if state.get("arch") != ARCH:
        raise RunError(f"{path}: made for architecture {state.get('arch')!r}, expected {ARCH!r}")
    return state


def load_model_from_run(
    run: str | Path, checkpoint: str = "best.pt", device: str | torch.device = "cpu"
) -> tuple[PneumoniaNet, Config, dict[str, Any]]:
    """The trained model of a run folder, in eval mode, with its config and checkpoint."""
    state = load_checkpoint(Path(run) / checkpoint, map_location=device)
    config = Config.from_dict(state["config"])
    model = PneumoniaNet(dropout=config.dropout, frozen=state["frozen"])
    model.weights_used = state["weights_used"]
    try:
        model.load_state_dict(state["model"], strict=True)
    except RuntimeError as err:
        raise RunError(
            f"{Path(run) / checkpoint}: weights do not fit PneumoniaNet ({err})"
        ) from err
    return model.to(device).eval(), config, state


# --- data ---------------------------------------------------------------------------------


@dataclass
class PreparedData:
    """Everything training needs from the data layer: where, what, which split, the cache."""

    location: DatasetLocation
    scanned: ScanResult
    splits: dict[str, pd.DataFrame]
    cache: ImageCache

    def rows(self, split: str) -> tuple[list[int], list[int]]:
        """Cache indices and targets of one split, leaving out images that failed to decode."""
        table = self.splits[split]
        indices = [self.cache.index_of(p) for p in table["path"]]
        keep = [i for i, idx in enumerate(indices) if self.cache.ok[idx]]
        return [indices[i] for i in keep], [int(table["target"].iloc[i]) for i in keep]

    def fingerprint(self) -> str:
        """A short hash of the file list and split, recorded in ``config.json``."""
        h = hashlib.sha1()
        for split in ("train", "val", "test"):
            for path in self.splits[split]["path"]:
                h.update(f"{split}:{path}\n".encode())
        return h.hexdigest()[:16]


def prepare_data(
    config: Config, data_dir: str | Path | None = None, progress: bool = True
) -> PreparedData:
    """Find, scan, split and cache the dataset for ``config`` (cache reused when valid)."""
    location = find_dataset(data_dir)
    scanned = scan(location.root)
    if len(scanned.problems):
        print(f"skipping {len(scanned.problems)} unusable files (see `python -m helpers scan`)")
    splits = make_splits(scanned.images, config)
    paths = pd.concat([splits[s]["path"] for s in ("train", "val", "test")]).tolist()
    cache = build_cache(
        paths, config.image_size, outputs_dir() / "cache", progress=progress,
        intensity=config.intensity,
    )  # fmt: skip
    return PreparedData(location, scanned, splits, cache)


# --- the engine ---------------------------------------------------------------------------


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
    such slow running averages lag behind, so evaluation-mode predictions are poor for many
    epochs (measured on the demo data: validation stuck at the majority class for 6 epochs
    with 0.01, 0.84 accuracy with 0.1). PyTorch's default 0.1 fixes that.
    """
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.momentum = momentum


def to_channels_last(model: nn.Module, device: torch.device) -> nn.Module:
    """The model in ``channels_last`` memory format on CUDA and on CPU (other devices: as is).

    On CUDA it suits tensor cores. On CPU it pays too: training epochs 1.35x faster at
    256 px, batch 64, one thread (``python -m helpers bench train --compare contiguous`` on
    a 2-core Xeon, see ``benchmarks/README.md``), and a training step 1.33x faster at
    64 px. Inputs can stay contiguous: the first convolution switches the format.
    """
    if device.type in ("cuda", "cpu"):
        return model.to(memory_format=torch.channels_last)
    return model


def _weighted_f1(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Support-weighted F1 over the whole epoch (the original averaged it over batches)."""
    from sklearn.metrics import f1_score

    return float(f1_score(y_true, y_pred, average="weighted", zero_division=0))


@dataclass
class EpochResult:
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
    ema: torch.optim.swa_utils.AveragedModel | None = None,
) -> EpochResult:
    """One pass over ``loader``: trains when ``optimizer`` is given, else evaluates.

    ``grad_clip=None`` trains without clipping; ``ema``, when given, is updated after every
    optimiser step.

    Loss is averaged per image (the weighted loss's own normalisation per batch, weighted
    by batch size); accuracy and F1 are computed over all of the epoch's predictions.
    """
    training = optimizer is not None
    model.train(training)
    use_amp = device.type == "cuda"
    amp_dtype = torch.bfloat16 if use_amp and torch.cuda.is_bf16_supported() else torch.float16
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
                if scaler is not None and scaler.is_enabled():
                    scaler.scale(loss).backward()
                    scaler.unscale_(optimizer)
                    if grad_clip is not None:
                        nn.utils.clip_grad_norm_(params, grad_clip)
                    scaler.step(optimizer)
                    scaler.update()
                else:
                    loss.backward()
                    if grad_clip is not None:
                        nn.utils.clip_grad_norm_(params, grad_clip)
                    optimizer.step()
                if ema is not None:
                    ema.update_parameters(model)
            total_loss += float(loss.detach()) * len(y)
            seen += len(y)
            targets.append(y.cpu())
            predictions.append(logits.detach().argmax(1).cpu())
            if progress is not None:
                progress.update(1)
    y_true = torch.cat(targets).numpy()
    y_pred = torch.cat(predictions).numpy()
    return EpochResult(
        total_loss / seen, float((y_true == y_pred).mean()), _weighted_f1(y_true, y_pred)
    )


def _library_versions() -> dict[str, str]:
    import torchvision

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "numpy": np.__version__,
    }


def _write_history(path: Path, history: list[dict[str, Any]]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=HISTORY_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(history)
    atomic_write_text(path, buffer.getvalue())


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
    """Train PneumoniaNet with the article's recipe and write a run folder.

    ``resume=True`` continues from ``run_dir/last.pt`` (model, optimiser, scheduler, scaler,
    early-stopping state, RNG states, history). ``stop_after`` ends the call after that many
    epochs in total, as an interruption would (used to test resuming).
    """
    from tqdm.auto import tqdm

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    dev = pick_device(device)
    data = prepared or prepare_data(config, data_dir, progress=progress)
    train_idx, train_y = data.rows("train")
    val_idx, val_y = data.rows("val")
    if not train_idx or not val_idx:
        raise RunError(f"{data.location.root}: no training or validation images to train on")

    weights = class_weights(train_y)  # refuses a training split missing a class, early
    seed_everything(config.seed)
    model = build_model(config.pretrained, dropout=config.dropout).to(dev)
    if not model.frozen:
        use_scratch_batchnorm(model)
    model = to_channels_last(model, dev)
    criterion = nn.CrossEntropyLoss(
        weight=torch.tensor([weights[c] for c in CLASSES], device=dev),
        label_smoothing=config.label_smoothing,
    )
    groups = parameter_groups(model, config)
    optimizer = torch.optim.AdamW(
        groups, betas=config.betas, eps=config.eps, weight_decay=config.weight_decay
    )
    scheduler = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(
        optimizer, T_0=config.t_0, T_mult=config.t_mult, eta_min=config.eta_min
    )
    scaler = torch.amp.GradScaler("cuda", enabled=dev.type == "cuda")
    ema = None
    if config.ema_decay > 0:  # averages parameters and BatchNorm statistics alike
        ema = torch.optim.swa_utils.AveragedModel(
            model,
            multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(config.ema_decay),
            use_buffers=True,
        )
    kept = model if ema is None else ema.module  # the weights validated, saved and tested
    train_loader = BatchLoader(
        data.cache, train_idx, train_y, config.batch_size, shuffle=True, augment=True,
        policy=config.augment, seed=config.seed, device=dev,
    )  # fmt: skip
    val_loader = BatchLoader(
        data.cache, val_idx, val_y, config.eval_batch_size, shuffle=False, augment=False,
        seed=config.seed, device=dev,
    )  # fmt: skip

    history: list[dict[str, Any]] = []
    best_loss, best_epoch, bad_epochs, start_epoch = math.inf, 0, 0, 0
    if resume and (run_dir / "last.pt").is_file():
        state = load_checkpoint(run_dir / "last.pt", map_location=dev)
        _check_compatible(state, config, run_dir / "last.pt")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        if ema is not None:
            ema.load_state_dict(state["ema"])
        torch.set_rng_state(state["torch_rng"])
        history = pd.read_csv(run_dir / "history.csv").to_dict(orient="records")[: state["epoch"]]
        best_loss, best_epoch, bad_epochs = (
            state["best_val_loss"],
            state["best_epoch"],
            state["bad_epochs"],
        )
        start_epoch = state["epoch"]
        print(f"resuming {run_dir} after epoch {start_epoch}")

    run_config = {
        "config": config.to_dict(),
        "weights_used": model.weights_used,
        "frozen": model.frozen,
        "device": str(dev),
        "data": {
            "root": str(data.location.root),
            "source": data.location.source,
            "is_demo": data.location.is_demo,
            "fingerprint": data.fingerprint(),
            "counts": {s: int(len(data.splits[s])) for s in ("train", "val", "test")},
            "skipped_files": int(len(data.scanned.problems)),
            "class_weights": weights,
        },
        "versions": _library_versions(),
    }
    atomic_write_text(run_dir / "config.json", json.dumps(run_config, indent=2))

    def checkpoint(epoch: int) -> dict[str, Any]:
        return {
            "format_version": CHECKPOINT_FORMAT,
            "arch": ARCH,
            "config": config.to_dict(),
            "image_size": config.image_size,
            "weights_used": model.weights_used,
            "frozen": model.frozen,
            "epoch": epoch,
            "model": kept.state_dict(),
        }

    stopped_early = False
    last_epoch = config.epochs if stop_after is None else min(config.epochs, stop_after)
    steps = len(train_loader) + len(val_loader)
    for epoch in range(start_epoch, last_epoch):
        if bad_epochs >= config.patience:  # a resumed run that had already stopped
            stopped_early = True
            break
        started = time.perf_counter()
        lrs = {g["name"]: g["lr"] for g in optimizer.param_groups}
        train_loader.set_epoch(epoch)
        bar = tqdm(
            total=steps,
            desc=f"epoch {epoch + 1}/{config.epochs}",
            leave=False,
            disable=not progress,
        )
        fit = run_epoch(
            model, train_loader, criterion, dev, optimizer, scaler, config.grad_clip, bar, ema
        )
        val = run_epoch(kept, val_loader, criterion, dev, progress=bar)
        bar.close()
        scheduler.step()
        row = {
            "epoch": epoch + 1,
            "train_loss": fit.loss,
            "train_acc": fit.acc,
            "train_f1": fit.f1,
            "val_loss": val.loss,
            "val_acc": val.acc,
            "val_f1": val.f1,
            "lr_head": lrs.get("head"),
            "lr_backbone": lrs.get("backbone"),
            "seconds": round(time.perf_counter() - started, 3),
        }
        history.append(row)
        improved = val.loss < best_loss
        if improved:
            best_loss, best_epoch, bad_epochs = val.loss, epoch + 1, 0
            save_checkpoint(run_dir / "best.pt", checkpoint(epoch + 1))
        else:
            bad_epochs += 1
        _write_history(run_dir / "history.csv", history)
        last = checkpoint(epoch + 1)
        last.update(
            model=model.state_dict(),
            ema=None if ema is None else ema.state_dict(),
            optimizer=optimizer.state_dict(),
            scheduler=scheduler.state_dict(),
            scaler=scaler.state_dict(),
            torch_rng=torch.get_rng_state(),
            best_val_loss=best_loss,
            best_epoch=best_epoch,
            bad_epochs=bad_epochs,
        )
        save_checkpoint(run_dir / "last.pt", last)
        if progress:
            mark = " *" if improved else ""
            print(
                f"epoch {epoch + 1:3d}  train loss {fit.loss:.4f} acc {fit.acc:.3f} f1 {fit.f1:.3f}  "
                f"val loss {val.loss:.4f} acc {val.acc:.3f} f1 {val.f1:.3f}  "
                f"lr {row['lr_head']:.2e}  {row['seconds']:.1f}s{mark}"
            )
        if bad_epochs >= config.patience:
            stopped_early = True
            if progress:
                print(f"early stop: no better validation loss for {config.patience} epochs")
            break

    best = load_checkpoint(run_dir / "best.pt", map_location=dev)
    model.load_state_dict(best["model"])
    model.eval()
    return TrainResult(
        run_dir,
        model,
        pd.DataFrame(history, columns=HISTORY_COLUMNS),
        best_epoch,
        best_loss,
        stopped_early,
        data,
    )


def _check_compatible(state: dict[str, Any], config: Config, path: Path) -> None:
    """Refuse to resume a run made with a different recipe (the history would be meaningless)."""
    saved = Config.from_dict(state["config"]).to_dict()
    changed = [k for k, v in config.to_dict().items() if saved[k] != v]
    if changed:
        raise RunError(
            f"{path}: made with a different config (changed: {', '.join(changed)}); use a new run folder"
        )


def read_history(run_dir: str | Path) -> pd.DataFrame:
    """``history.csv`` of a run folder as a DataFrame."""
    path = Path(run_dir) / "history.csv"
    if not path.is_file():
        raise RunError(f"{path}: no history (has this run trained an epoch?)")
    return pd.read_csv(path)
