"""Run folders: the only thing that passes from training to evaluation.

A run folder holds ``config.json`` (the recipe, the data, the library versions),
``history.csv`` (one row per epoch), ``best.pt`` (the weights of the best validation epoch)
and ``last.pt`` (everything needed to resume), later ``metrics-<split>.json`` and
``predictions-<split>.csv``. Every file is written to a temporary name and renamed, so a run
killed at any moment leaves the previous complete file.

Checkpoints hold tensors and plain values only and are read with
``torch.load(..., weights_only=True, map_location=...)``: no code runs from a file, and a
checkpoint written on a GPU loads on a CPU.
"""

from __future__ import annotations

import csv
import io
import json
import platform
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from helpers.config import Config, outputs_dir
from helpers.files import atomic_write_bytes, atomic_write_text
from helpers.model import PneumoniaNet

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
"""``history.csv``'s columns; ``*_f1`` is the support-weighted F1 over the whole epoch."""


class RunError(RuntimeError):
    """A run folder or checkpoint that cannot be used; the message says which and why."""


def notebook_run_dir(name: str = "notebook") -> Path:
    """The run folder ``outputs/runs/<name>`` of a notebook's training run.

    ``"notebook"`` is where notebook 04 writes its run and notebooks 05 and 06 look for it;
    an exercise passes its own ``name`` so that its run does not overwrite that one and the
    curves of both can be compared. ``name`` must be one plain folder name.
    """
    if not name or name in (".", "..") or "/" in name or "\\" in name:
        raise ValueError(f"run name must be one plain folder name, got {name!r}")
    return outputs_dir() / "runs" / name


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


def model_checkpoint(model: PneumoniaNet, config: Config, epoch: int) -> dict[str, Any]:
    """The part of a checkpoint evaluation needs: the weights and how to rebuild the model."""
    return {
        "format_version": CHECKPOINT_FORMAT,
        "arch": ARCH,
        "config": config.to_dict(),
        "image_size": config.image_size,
        "weights_used": model.weights_used,
        "frozen": model.frozen,
        "epoch": epoch,
        "model": model.state_dict(),
    }


def load_model_from_run(
    run: str | Path, checkpoint: str = "best.pt", device: str | torch.device = "cpu"
) -> tuple[PneumoniaNet, Config, dict[str, Any]]:
    """The trained model of a run folder, in eval mode, with its config and checkpoint."""
    state = load_checkpoint(Path(run) / checkpoint, map_location=device)
    config = Config.from_dict(state["config"])
    model = PneumoniaNet(
        dropout=config.dropout, frozen=state["frozen"], trainable_blocks=config.trainable_blocks
    )
    model.weights_used = state["weights_used"]
    try:
        model.load_state_dict(state["model"], strict=True)
    except RuntimeError as err:
        raise RunError(
            f"{Path(run) / checkpoint}: weights do not fit PneumoniaNet ({err})"
        ) from err
    return model.to(device).eval(), config, state


def check_compatible(state: dict[str, Any], config: Config, path: Path) -> None:
    """Refuse to resume a run made with a different recipe (the history would be meaningless)."""
    saved = Config.from_dict(state["config"]).to_dict()
    changed = [k for k, v in config.to_dict().items() if saved[k] != v]
    if changed:
        raise RunError(
            f"{path}: made with a different config (changed: {', '.join(changed)}); use a new run folder"
        )


# --- random state ----------------------------------------------------------------------------


def rng_state() -> dict[str, Any]:
    """The random generators training draws from: torch's CPU generator and, when CUDA is in
    use, every CUDA device's generator (dropout on a GPU draws from the CUDA one).

    The data loader needs nothing here: each epoch's shuffle and augmentation come from a
    generator seeded by ``(seed, epoch)`` (:class:`helpers.loader.BatchLoader`), and resuming
    restores the epoch number.
    """
    state: dict[str, Any] = {"torch_rng": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda_rng"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Put back what :func:`rng_state` saved (CUDA states only when CUDA is available).

    The states must be CPU tensors, and a checkpoint loaded with ``map_location="cuda"`` has
    moved them to the GPU: they are brought back first.
    """
    torch.set_rng_state(state["torch_rng"].cpu())
    cuda = state.get("cuda_rng")
    if cuda is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in cuda])


# --- config.json and history.csv ------------------------------------------------------------


def library_versions() -> dict[str, str]:
    """The versions that decide the numbers, recorded in ``config.json``."""
    import torchvision

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "numpy": np.__version__,
    }


def write_run_config(run_dir: Path, record: dict[str, Any]) -> None:
    """Write ``config.json``: ``record`` plus the library versions."""
    payload = {**record, "versions": library_versions()}
    atomic_write_text(run_dir / "config.json", json.dumps(payload, indent=2))


def read_run_config(run_dir: str | Path) -> dict[str, Any]:
    """``run_dir/config.json`` as a dict; ``{}`` when absent (the data root is then unknown)."""
    path = Path(run_dir) / "config.json"
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise RunError(f"{path}: unreadable run config ({err})") from err


def write_history(path: Path, history: list[dict[str, Any]]) -> None:
    """Write ``history.csv`` (one row per epoch, :data:`HISTORY_COLUMNS`) atomically."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=HISTORY_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(history)
    atomic_write_text(path, buffer.getvalue())


def read_history(run_dir: str | Path) -> pd.DataFrame:
    """``history.csv`` of a run folder as a DataFrame."""
    path = Path(run_dir) / "history.csv"
    if not path.is_file():
        raise RunError(f"{path}: no history (has this run trained an epoch?)")
    return pd.read_csv(path)
