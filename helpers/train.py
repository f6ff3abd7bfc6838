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

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from sklearn.metrics import f1_score
from torch import nn

from helpers.config import CLASSES, Config
from helpers.data import class_weights
from helpers.files import atomic_write_text
from helpers.fold import with_folded_prefix
from helpers.inputcheck import write_input_stats
from helpers.loader import BatchLoader, PreparedData, load_run_data, prepare_data
from helpers.manifest import halves_description, write_manifest
from helpers.model import PneumoniaNet, build_model
from helpers.recipe import (
    EarlyStopping,
    autocast_dtype,
    make_ema,
    make_optimizer,
    pick_device,
    seed_everything,
    to_channels_last,
    use_scratch_batchnorm,
    weighted_loss,
)
from helpers.runs import (
    HISTORY_COLUMNS,
    RunError,
    check_compatible,
    git_commit,
    library_versions,
    load_checkpoint,
    model_checkpoint,
    read_run_config,
    restore_rng_state,
    rng_state,
    save_checkpoint,
    write_history,
    write_run_config,
)
from helpers.sources import DatasetLocation

# --- one epoch --------------------------------------------------------------------------------


@dataclass
class EpochResult:
    """The loss over one pass (weighted as the criterion weights it, so that it does not
    depend on how the images were batched), accuracy and support-weighted F1."""

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
    the forward pass runs in mixed precision (:func:`helpers.recipe.autocast_dtype`:
    bfloat16 from compute capability 8.0, float16 with the ``scaler`` below it). Accuracy and
    F1 are over all predictions.

    The loss is the criterion's over the whole pass: a class-weighted cross-entropy averages
    each batch over the sum of its images' class weights, so each batch's loss is weighted by
    that sum and the total divided by the sum of all weights (sum of weighted losses / sum of
    weights). Multiplying by the batch size instead would make the figure, and with it early
    stopping and ``best.pt``, depend on the batch size.
    """
    training = optimizer is not None
    model.train(training)
    chosen = autocast_dtype(device)  # bfloat16 from capability 8.0, float16 below, None off CUDA
    use_amp = chosen is not None
    amp_dtype = chosen or torch.float16
    # bfloat16 has float32's exponent range, so only float16 needs its loss scaled
    scaling = use_amp and amp_dtype == torch.float16 and scaler is not None and scaler.is_enabled()
    total_loss, total_weight = 0.0, 0.0
    class_weight = getattr(criterion, "weight", None)  # None: every image weighs 1
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
            weight = len(y) if class_weight is None else float(class_weight[y].sum())
            total_loss += float(loss.detach()) * weight
            total_weight += weight
            targets.append(y.cpu())
            predictions.append(logits.detach().argmax(1).cpu())
            if progress is not None:
                progress.update(1)
    y_true = torch.cat(targets).numpy()
    y_pred = torch.cat(predictions).numpy()
    f1 = float(f1_score(y_true, y_pred, average="weighted", zero_division=0))
    return EpochResult(total_loss / total_weight, float((y_true == y_pred).mean()), f1)


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


@dataclass
class Training:
    """The objects a run trains with; ``last.pt`` saves their state so a run can resume."""

    model: PneumoniaNet
    criterion: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    ema: torch.optim.swa_utils.AveragedModel | None
    stopper: EarlyStopping

    @property
    def kept(self) -> PneumoniaNet:
        """The weights that are validated, saved and tested: the average when there is one."""
        return self.model if self.ema is None else self.ema.module

    def resumable(self) -> dict[str, Any]:
        """The parts whose ``state_dict`` goes into ``last.pt`` under their own names."""
        return {
            "model": self.model,
            "optimizer": self.optimizer,
            "scheduler": self.scheduler,
            "scaler": self.scaler,
        }


def start_training(
    config: Config,
    weights: dict[str, float],
    device: torch.device,
    criterion: nn.Module | None = None,
) -> Training:
    """The model (seeded), loss, optimiser, schedule, scaler, weight average and early stopping.

    The loss is ``criterion`` (moved to ``device``) when one is given, else the article's
    cross-entropy weighted by ``weights``.
    """
    seed_everything(config.seed)
    model = build_model(config.pretrained, config.dropout, config.trainable_blocks).to(device)
    if not model.frozen:
        use_scratch_batchnorm(model)
    model = to_channels_last(model, device)
    optimizer, scheduler = make_optimizer(model, config)
    return Training(
        model=model,
        criterion=(
            weighted_loss(weights, config, device) if criterion is None else criterion.to(device)
        ),
        optimizer=optimizer,
        scheduler=scheduler,
        scaler=torch.amp.GradScaler("cuda", enabled=device.type == "cuda"),
        ema=make_ema(model, config),
        stopper=EarlyStopping(config.patience),
    )


def train(
    config: Config,
    run_dir: str | Path,
    data_dir: str | Path | DatasetLocation | None = None,
    *,
    resume: bool = False,
    device: str | None = None,
    progress: bool = True,
    prepared: PreparedData | None = None,
    stop_after: int | None = None,
    weights: dict[str, float] | None = None,
    criterion: nn.Module | None = None,
) -> TrainResult:
    """Train PneumoniaNet with ``config``'s recipe and write a run folder.

    The loss is the article's cross-entropy with class weights computed from the training
    split, unless ``weights`` (one per class name, e.g. all 1.0 for an unweighted loss) or a
    whole ``criterion`` (any loss taking logits and targets) is given: notebook 04 passes the
    criterion it built, so that changing it there changes the trained run. ``config.json``
    records the class weights the loss used (``null`` for a criterion without weights).

    A new run finds, scans and splits the data (:func:`helpers.loader.prepare_data`, or
    ``prepared``) and writes down which images it uses (``manifest.csv``) before its first
    epoch. ``resume=True`` continues from ``run_dir/last.pt`` (model, optimiser, scheduler,
    scaler, weight average, early-stopping state, random generators, history, best weights)
    on the images of the run's manifest, under ``data_dir`` if the dataset has moved; a
    changed image, another recipe (but for more ``epochs``), other class weights or other
    data is refused. ``stop_after`` ends the call after that many epochs in total, as an
    interruption would (used to test resuming; ``0`` writes the run folder's ``manifest.csv``
    and ``config.json`` and trains nothing).
    """
    if weights is not None and criterion is not None:
        raise ValueError("give the class weights or a criterion, not both")
    if weights is not None and set(weights) != set(CLASSES):
        raise ValueError(f"weights needs one value per class {CLASSES}, got {sorted(weights)}")
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    dev = pick_device(device)
    resuming = resume and (run_dir / "last.pt").is_file()
    if resuming:  # the cheap check first: another recipe is refused before any image is read
        check_compatible(load_checkpoint(run_dir / "last.pt"), config, run_dir / "last.pt")
    if prepared is not None:
        data = prepared
    elif resuming:  # the run's own images, not a new scan and split
        moved = data_dir.root if isinstance(data_dir, DatasetLocation) else data_dir
        data = load_run_data(run_dir, config, moved, progress=progress)
    else:
        data = prepare_data(config, data_dir, progress=progress)
    train_loader, val_loader = data.loader("train", config, dev), data.loader("val", config, dev)
    if not len(train_loader) or not len(val_loader):
        raise RunError(f"{data.location.root}: no training or validation images to train on")
    balanced = class_weights(train_loader.targets.tolist())  # refuses a split missing a class
    weights = balanced if weights is None else {c: float(weights[c]) for c in CLASSES}
    run = start_training(config, weights, dev, criterion)
    if criterion is not None:
        weights = _loss_weights(run.criterion)
    history: list[dict[str, Any]] = []
    best: dict[str, Any] | None = None
    fingerprint = data.fingerprint()
    if resuming:
        _same_loss_as_before(run_dir, weights)  # refused before anything is restored or written
        history, best = _restore(run_dir, config, dev, run, fingerprint)
        _record_resume(run_dir, config, len(history))
    else:
        write_manifest(run_dir, data.manifest)
        _write_config(run_dir, config, run.model, dev, data, weights, fingerprint)
        write_input_stats(run_dir, data.splits["train"], config.seed)  # for the input check

    fast = with_folded_prefix(run.model)  # the same function, faster when a prefix is frozen
    last_epoch = config.epochs if stop_after is None else min(config.epochs, stop_after)
    for epoch in range(len(history), last_epoch):
        if run.stopper.should_stop:  # a resumed run that had already stopped
            break
        history.append(_epoch(run, fast, train_loader, val_loader, epoch, config, dev, progress))
        improved = run.stopper.step(history[-1]["val_loss"], epoch + 1)
        if improved:
            best = _copy(model_checkpoint(run.kept, config, epoch + 1))
        # In this order, a kill between two writes leaves files that agree: last.pt holds the
        # history and the best weights, so a resume rewrites what came after it.
        write_history(run_dir / "history.csv", history)
        _save_last(run_dir, config, epoch + 1, run, history, best, fingerprint)
        if improved:
            save_checkpoint(run_dir / "best.pt", best)
        if progress:
            _print_epoch(history[-1], improved, run.stopper, config.patience)

    frame = pd.DataFrame(history, columns=HISTORY_COLUMNS)
    stopper = run.stopper
    if best is not None:
        run.model.load_state_dict(best["model"])
    run.model.eval()
    return TrainResult(
        run_dir, run.model, frame, stopper.best_epoch, stopper.best_loss, stopper.should_stop, data
    )


def _copy(checkpoint: dict[str, Any]) -> dict[str, Any]:
    """``checkpoint`` with its weights copied, so that training on does not change them."""
    return {**checkpoint, "model": {k: v.detach().clone() for k, v in checkpoint["model"].items()}}


def _epoch(
    run: Training,
    fast: nn.Module,
    train_loader: BatchLoader,
    val_loader: BatchLoader,
    epoch: int,
    config: Config,
    device: torch.device,
    progress: bool,
) -> dict[str, Any]:
    """One epoch of the schedule: train, validate the kept weights, step the scheduler.
    Returns the epoch's row of ``history.csv``."""
    started = time.perf_counter()
    lrs = {g["name"]: g["lr"] for g in run.optimizer.param_groups}
    train_loader.set_epoch(epoch)
    bar = _progress_bar(epoch, config, len(train_loader) + len(val_loader), progress)
    update = None if run.ema is None else (lambda: run.ema.update_parameters(run.model))
    fit = run_epoch(
        fast, train_loader, run.criterion, device, run.optimizer, run.scaler, config.grad_clip,
        bar, update,
    )  # fmt: skip
    validated = fast if run.ema is None else run.kept
    val = run_epoch(validated, val_loader, run.criterion, device, progress=bar)
    bar.close()
    run.scheduler.step()
    return _history_row(epoch + 1, fit, val, lrs, time.perf_counter() - started)


# --- how long a run takes -------------------------------------------------------------------


# --- the run's bookkeeping ----------------------------------------------------------------------


def _restore(
    run_dir: Path, config: Config, device: torch.device, run: Training, data_fingerprint: str
) -> tuple[list[dict], dict[str, Any] | None]:
    """Load ``last.pt`` into the training objects; return the history up to its epoch and the
    best epoch's checkpoint (rewriting ``best.pt`` from it if a kill came between the two)."""
    path = run_dir / "last.pt"
    state = load_checkpoint(path, map_location=device)
    check_compatible(state, config, path, data_fingerprint)
    for name, part in run.resumable().items():
        if name == "scaler" and not state[name]:
            # saved by a disabled scaler (a CPU run, or bfloat16): nothing to carry over, and a
            # run resumed on a GPU that uses one starts it fresh
            continue
        part.load_state_dict(state[name])
    if run.ema is not None:
        run.ema.load_state_dict(state["ema"])
    run.stopper.load_state_dict(state)
    restore_rng_state(state)
    _same_threads_as_before(state.get("threads"))
    print(f"resuming {run_dir} after epoch {state['epoch']}")
    if "history" in state:
        history = [dict(row) for row in state["history"]]
    else:  # a last.pt written before it held the history
        history = pd.read_csv(run_dir / "history.csv").to_dict(orient="records")[: state["epoch"]]
    write_history(run_dir / "history.csv", history)
    best = state.get("best")
    if best is not None:
        on_disk = (run_dir / "best.pt").is_file() and load_checkpoint(run_dir / "best.pt")
        if not on_disk or on_disk.get("epoch") != best["epoch"]:
            save_checkpoint(run_dir / "best.pt", best)
    elif (run_dir / "best.pt").is_file():
        best = load_checkpoint(run_dir / "best.pt", map_location=device)
    return history, best


def _same_threads_as_before(threads: int | None) -> None:
    """Resume with the CPU thread count the run started with: results on a CPU depend on it
    in the last digits (how sums are split between threads), and :mod:`helpers.cpu` may have
    chosen another one for today's load. An ``OMP_NUM_THREADS`` set by the user wins."""
    if threads and threads != torch.get_num_threads() and "OMP_NUM_THREADS" not in os.environ:
        print(f"using {threads} CPU threads, as before the interruption")
        torch.set_num_threads(threads)


def _save_last(
    run_dir: Path,
    config: Config,
    epoch: int,
    run: Training,
    history: list[dict[str, Any]],
    best: dict[str, Any] | None,
    data_fingerprint: str,
) -> None:
    """Write ``last.pt``: everything :func:`_restore` needs to carry on after ``epoch``,
    including the history so far, the best epoch's checkpoint and the data's fingerprint."""
    state = model_checkpoint(run.model, config, epoch)
    state["threads"] = torch.get_num_threads()
    state.update({name: part.state_dict() for name, part in run.resumable().items()})
    state.update(ema=None if run.ema is None else run.ema.state_dict(), **run.stopper.state_dict())
    state.update(rng_state())
    state.update(history=history, best=best, data_fingerprint=data_fingerprint)
    save_checkpoint(run_dir / "last.pt", state)


def _same_loss_as_before(run_dir: Path, weights: dict[str, float] | None) -> None:
    """Refuse to resume with other class weights than the run's ``config.json`` records
    (the history would mix two losses)."""
    before = read_run_config(run_dir).get("data", {}).get("class_weights", weights)
    if before != weights:
        raise RunError(
            f"{run_dir}: trained with class weights {before}, resumed with {weights}; "
            "use a new run folder"
        )


def _loss_weights(criterion: nn.Module) -> dict[str, float] | None:
    """The class weights inside ``criterion`` (``None`` when it has none), for ``config.json``."""
    weight = getattr(criterion, "weight", None)
    if not isinstance(weight, torch.Tensor):
        return None
    return {c: float(w) for c, w in zip(CLASSES, weight.tolist(), strict=True)}


def _write_config(
    run_dir: Path,
    config: Config,
    model: PneumoniaNet,
    device: torch.device,
    data: PreparedData,
    weights: dict[str, float] | None,
    fingerprint: str,
) -> None:
    """``config.json``: the recipe, the weights, the device, the data of this run (its images
    are in ``manifest.csv``, whose ``fingerprint`` is recorded), the versions and the commit."""
    splits = ("train", "val", "test")
    write_run_config(
        run_dir,
        {
            "config": config.to_dict(),
            "weights_used": model.weights_used,
            "frozen": model.frozen,
            "device": str(device),
            "threads": torch.get_num_threads(),
            "data": {
                "root": str(data.location.root),
                "source": data.location.source,
                "is_demo": data.location.is_demo,
                "manifest": "manifest.csv",
                "fingerprint": fingerprint,
                "counts": {s: int(len(data.splits[s])) for s in splits},
                "test_halves": halves_description(data.manifest),
                "skipped_files": 0 if data.scanned is None else int(len(data.scanned.problems)),
                "left_out": {s: data.left_out(s) for s in splits},
                "class_weights": weights,
            },
        },
        commit=git_commit(),
    )


def _record_resume(run_dir: Path, config: Config, epoch: int) -> None:
    """Note a resume in ``config.json``: the recipe now (more epochs may have been given), and
    after which epoch, with which code and libraries, the run went on (``versions`` and
    ``commit`` stay those the run started with)."""
    record = read_run_config(run_dir)
    resumed = record.get("resumed", [])
    resumed.append({"after_epoch": epoch, "commit": git_commit(), "versions": library_versions()})
    record.update(config=config.to_dict(), resumed=resumed)
    atomic_write_text(run_dir / "config.json", json.dumps(record, indent=2))


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


def _print_epoch(
    row: dict[str, Any], improved: bool, stopper: EarlyStopping, patience: int
) -> None:
    print(
        f"epoch {row['epoch']:3d}  train loss {row['train_loss']:.4f} acc {row['train_acc']:.3f} "
        f"f1 {row['train_f1']:.3f}  val loss {row['val_loss']:.4f} acc {row['val_acc']:.3f} "
        f"f1 {row['val_f1']:.3f}  lr {row['lr_head']:.2e}  {row['seconds']:.1f}s"
        + (" *" if improved else "")
    )
    if stopper.should_stop:
        print(f"early stop: no better validation loss for {patience} epochs")
