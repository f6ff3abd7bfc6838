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
import hashlib
import io
import json
import platform
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from helpers.config import Config, ConfigError, outputs_dir
from helpers.data import make_splits, scan
from helpers.files import atomic_write_bytes, atomic_write_text
from helpers.manifest import MANIFEST_NAME, make_manifest, write_manifest
from helpers.model import PneumoniaNet
from helpers.sources import find_dataset

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
    config = recorded_config(state, Path(run) / checkpoint)
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


RESUME_MAY_CHANGE: tuple[str, ...] = ("epochs", "eval_batch_size", "quick")
"""Recipe fields a resumed run may change: the maximum number of epochs (to extend a run),
the evaluation batch size (the validation loss is exact, so it does not depend on it) and
the quick-mode label (quick mode's values are compared field by field). Every other field
changes the model a run trains, so a different value is refused."""


def recorded_config(state: dict[str, Any], path: Path) -> Config:
    """The recipe a checkpoint recorded, or :class:`RunError` naming the file when this version
    cannot run it (an option since removed, such as ``intensity="clahe"``)."""
    try:
        return Config.from_dict(state["config"])
    except ConfigError as err:
        raise RunError(f"{path}: made with a recipe this version cannot run ({err})") from err


def check_compatible(
    state: dict[str, Any], config: Config, path: Path, data_fingerprint: str | None = None
) -> None:
    """Refuse to resume a run made with a different recipe or on other data (the history
    would be meaningless): every field but :data:`RESUME_MAY_CHANGE` must be equal, ``epochs``
    may only grow, and ``data_fingerprint`` (the manifest's) must be the one recorded."""
    saved = recorded_config(state, path).to_dict()
    changed = [
        k for k, v in config.to_dict().items() if k not in RESUME_MAY_CHANGE and saved[k] != v
    ]
    if changed:
        raise RunError(
            f"{path}: made with a different config (changed: {', '.join(changed)}); use a new run folder"
        )
    if config.epochs < state["epoch"]:
        raise RunError(
            f"{path}: has already trained {state['epoch']} epochs, more than --epochs "
            f"{config.epochs}; to extend a run give more epochs, not fewer"
        )
    recorded = state.get("data_fingerprint")
    if data_fingerprint is not None and recorded is not None and recorded != data_fingerprint:
        raise RunError(
            f"{path}: trained on other data (manifest fingerprint {recorded}, now "
            f"{data_fingerprint}); use a new run folder"
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


# --- a manifest for a run trained before manifests ------------------------------------------


def _split_fingerprint(splits: dict[str, pd.DataFrame]) -> str:
    """What ``config.json`` recorded as ``data.fingerprint`` before runs had a manifest: a hash
    of each image's split and absolute path, in split order."""
    digest = hashlib.sha1()
    for split in ("train", "val", "test"):
        for path in splits[split]["path"]:
            digest.update(f"{split}:{path}\n".encode())
    return digest.hexdigest()[:16]


def backfill_manifest(run_dir: str | Path, data_dir: str | Path | None = None) -> Path:
    """Write ``manifest.csv`` for a run trained before runs recorded their images.

    The run's split is drawn again from its recorded recipe, on ``data_dir`` or the data root
    recorded in ``config.json``, and written only if it is the split the run used: the
    fingerprint ``config.json`` recorded then (each image's split and path) must come out
    the same. A different scikit-learn, other data or data at another path give another
    fingerprint, and nothing is written (:class:`RunError` says so). Returns the manifest's
    path.
    """
    run_dir = Path(run_dir)
    target = run_dir / MANIFEST_NAME
    if target.is_file():
        raise RunError(f"{target}: exists already")
    record = read_run_config(run_dir)
    data = record.get("data", {})
    recorded = data.get("fingerprint")
    root = data_dir if data_dir is not None else data.get("root")
    if not recorded or root is None or "config" not in record:
        raise RunError(f"{run_dir / 'config.json'}: records no data fingerprint or data root")
    config = Config.from_dict(record["config"])
    splits = make_splits(scan(find_dataset(root).root).images, config)
    drawn = _split_fingerprint(splits)
    if drawn != recorded:
        raise RunError(
            f"{run_dir}: the split drawn now from {root} (fingerprint {drawn}) is not the one "
            f"the run recorded ({recorded}): other data, data at another path, or another "
            "scikit-learn version; no manifest written"
        )
    return write_manifest(run_dir, make_manifest(splits))


def library_versions() -> dict[str, str]:
    """The versions that decide the numbers, recorded in ``config.json``: torch, torchvision and
    numpy compute them; scikit-learn drew the validation split; Pillow decoded the images."""
    import PIL
    import sklearn
    import torchvision

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "numpy": np.__version__,
        "scikit-learn": sklearn.__version__,
        "pillow": PIL.__version__,
    }


def git_commit(folder: str | Path | None = None) -> str | None:
    """The commit checked out in the git checkout ``folder`` (default: the one holding
    ``helpers/``), read from its ``.git`` files (a worktree's too), without running git;
    ``None`` outside a git checkout. Recorded in ``config.json`` so that a run names the code
    that trained it (uncommitted changes are not detected)."""
    folder = Path(folder) if folder is not None else Path(__file__).resolve().parents[1]
    git = folder / ".git"
    try:
        if git.is_file():  # a worktree: "gitdir: <its folder in the main repository>"
            text = git.read_text(encoding="utf-8").strip()
            if not text.startswith("gitdir:"):
                return None
            git = (folder / text.removeprefix("gitdir:").strip()).resolve()
        if not (git / "HEAD").is_file():
            return None
        head = (git / "HEAD").read_text(encoding="utf-8").strip()
        if not head.startswith("ref:"):
            return head or None  # a detached HEAD holds the commit itself
        ref = head.removeprefix("ref:").strip()
        common = git
        if (git / "commondir").is_file():  # a worktree keeps its branches in the main .git
            common = (git / (git / "commondir").read_text(encoding="utf-8").strip()).resolve()
        for base in (git, common):
            if (base / ref).is_file():
                return (base / ref).read_text(encoding="utf-8").strip()
        packed = common / "packed-refs"
        if packed.is_file():
            for line in packed.read_text(encoding="utf-8").splitlines():
                if line.endswith(f" {ref}"):
                    return line.split()[0]
    except OSError:
        return None
    return None


def write_run_config(run_dir: Path, record: dict[str, Any], commit: str | None = None) -> None:
    """Write ``config.json``: ``record`` plus the library versions and ``commit`` (the code's
    git commit, :func:`git_commit`; ``None`` outside a git checkout)."""
    payload = {**record, "versions": library_versions(), "commit": commit}
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
