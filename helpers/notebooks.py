"""The notebook series: what every notebook prints first, the run notebooks 05 and 06 need,
keeping outputs between sessions, and running all notebooks in order.

Two audiences:

* called *inside* the notebooks: :func:`show_setup` (which data, which recipe, where outputs
  go), :func:`show_run` (the recipe of the run notebooks 05 and 06 score), :func:`keep_outputs`
  (Google Drive on Colab, ``/kaggle/working`` on Kaggle) and :func:`trained_run` (the run of
  notebook 04, found in the outputs or, on Kaggle, among the notebook's inputs, or one trained
  on the spot, saying so), so that no notebook copies that code from another;
* :func:`run_notebooks` (``python -m helpers run-notebooks``) executes them top to bottom
  with ``nbclient``, keeps executed copies *with* their outputs under ``outputs/notebooks``
  and stops at the first failing cell with an error naming it.

``nbclient`` and ``nbformat`` are development dependencies, imported only by
:func:`run_notebooks`, so the notebooks themselves (on Colab or Kaggle) do not need them.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from unittest import mock

from helpers import platforms
from helpers.config import Config, cache_dir, outputs_dir, project_root
from helpers.files import atomic_write_text
from helpers.runs import notebook_run_dir
from helpers.sources import KAGGLE_INPUT, DatasetLocation, find_dataset

NOTEBOOKS: tuple[str, ...] = (
    "01_dataset_eda.ipynb",
    "02_preprocessing.ipynb",
    "03_model.ipynb",
    "04_training.ipynb",
    "05_evaluation.ipynb",
    "06_use_your_model.ipynb",
)
"""The series, in reading order (04 trains the run that 05 and 06 use)."""

CELL_TIMEOUT_S = 1800
"""Per-cell limit for :func:`run_notebooks`: generous, the full recipe trains in one cell."""

DRIVE_FOLDER = "/content/drive/MyDrive/pneumonia-tutorial"
"""Where :func:`keep_outputs` keeps outputs on Colab."""

KAGGLE_WORKING = "/kaggle/working/pneumonia-tutorial"
"""Where :func:`keep_outputs` keeps outputs on Kaggle (saved with the notebook's version)."""


class NotebookError(RuntimeError):
    """A notebook failed; the message names the notebook, the cell and the error."""


# --- inside the notebooks -----------------------------------------------------------------


def _mode_and_size(config: Config) -> tuple[str, str]:
    """How :func:`show_setup` and :func:`show_run` name a recipe's mode and image size."""
    mode = "QUICK (small images, few epochs, a subset)" if config.quick else "full"
    return mode, f"{config.image_size}x{config.image_size}"


def show_setup(config: Config, location: DatasetLocation) -> None:
    """Print the few facts a reader needs before trusting any output of a notebook.

    Which data (and whether it is the synthetic demo, loudly), the quick or full recipe with
    its image size and epochs, the starting weights (ImageNet or none), and where caches, runs
    and figures are written.
    """
    print(f"data:    {location.root}  (found via: {location.source})")
    if location.is_demo:
        print(
            "*** SYNTHETIC DEMO DATA: drawn images, not X-rays. Everything below runs, but no "
            "number or figure from it says anything about pneumonia. See data/README.md for the "
            "real dataset. ***"
        )
    mode, size = _mode_and_size(config)
    print(f"recipe:  {mode}; images {size}, up to {config.epochs} epochs, seed {config.seed}")
    print(f"weights: {WEIGHTS_NAMES.get(config.pretrained, config.pretrained)}")
    print(f"outputs: {outputs_dir()}")


WEIGHTS_NAMES = {
    "imagenet": "ImageNet (the article's recipe: early blocks frozen)",
    "none": "none: the whole network trains from scratch (this project's from-scratch recipe)",
}


def show_run(run_dir: Path, config: Config, checkpoint: dict[str, Any]) -> None:
    """Print the recipe of the run a notebook scores, as :func:`show_setup` prints a recipe.

    ``config`` and ``checkpoint`` are what :func:`helpers.runs.load_model_from_run` returns.
    The config cell of notebooks 05 and 06 prints the recipe a run trained *now* would get;
    the run they find may differ (a run trained on a CPU uses 128 px, not 256), and every
    number they show is this run's, so they print its own recipe too.
    """
    mode, size = _mode_and_size(config)
    print(f"run:     {run_dir}")
    print(
        f"recipe:  {mode}; images {size}, weights {checkpoint.get('weights_used', 'unknown')}, "
        f"augment {config.augment}, intensity {config.intensity}, seed {config.seed}; "
        f"best epoch {checkpoint.get('epoch', '?')} of up to {config.epochs}"
    )


def keep_outputs() -> Path:
    """Keep runs and figures where the next session finds them; return the outputs folder.

    Colab gives every notebook a fresh machine, so a run trained in notebook 04 is gone when
    notebook 05 opens. On Colab this mounts Google Drive (it asks for permission) and points
    ``PNEUMONIA_OUTPUTS`` at ``MyDrive/pneumonia-tutorial``, while the image cache stays on
    the local disk (``PNEUMONIA_CACHE``): a memory-mapped array read at random over Drive's
    FUSE mount can stall (colabtools issue 1253), and the cache is rebuilt in a minute or
    two. On Kaggle it points ``PNEUMONIA_OUTPUTS`` at ``/kaggle/working`` (kept when you save
    a version; attach that output to the next notebook as an input, and :func:`trained_run`
    copies the run from there). Elsewhere the outputs folder already persists.
    """
    place = platforms.where()
    if place == platforms.COLAB:
        local_cache = cache_dir()
        from google.colab import drive  # only exists on Colab

        drive.mount("/content/drive")
        folder = Path(DRIVE_FOLDER)
        os.environ["PNEUMONIA_CACHE"] = str(local_cache)
    elif place == platforms.KAGGLE:
        folder = Path(KAGGLE_WORKING)
    else:
        print(f"outputs already persist on this machine: {outputs_dir()}")
        return outputs_dir()
    folder.mkdir(parents=True, exist_ok=True)
    os.environ["PNEUMONIA_OUTPUTS"] = str(folder)
    print(
        f"outputs now go to {folder}"
        + (f" (image cache: {cache_dir()})" if place == platforms.COLAB else "")
    )
    return folder


def attached_run(base: Path | None = None, max_depth: int = 8) -> Path | None:
    """A notebook-04 run attached to a Kaggle notebook as an input: the newest
    ``.../runs/notebook/best.pt`` under ``/kaggle/input`` (at most ``max_depth`` folders
    down, which covers ``/kaggle/input/<slug>/...`` and ``/kaggle/input/notebooks/<owner>/
    <slug>/...``), as its run folder; None when there is none."""
    base = KAGGLE_INPUT if base is None else Path(base)
    if not base.is_dir():
        return None
    found = [
        path
        for depth in range(max_depth + 1)
        for path in base.glob("*/" * depth + "runs/notebook/best.pt")
        if path.is_file()
    ]
    if not found:
        return None
    return max(found, key=lambda path: path.stat().st_mtime).parent


def _copy_run(source: Path, target: Path) -> bool:
    """Copy a run folder to ``target`` through a temporary sibling, renamed when complete;
    return whether it replaced a ``target`` that was there (an unfinished run, no ``best.pt``).

    A folder cannot be renamed onto a non-empty one (``os.replace`` raises "Directory not
    empty"), so an existing ``target`` is first renamed aside and removed once the copy is
    in its place: ``target`` is at every moment the old folder, absent, or the whole copy.
    A ``target`` holding ``best.pt`` (a trained run) is never replaced.
    """
    if (target / "best.pt").exists():
        raise FileExistsError(f"{target} holds a trained run (best.pt): not replacing it")
    temporary = target.with_name(f".{target.name}.copying")
    replaced = target.with_name(f".{target.name}.replaced")
    for leftover in (temporary, replaced):  # from an interrupted copy
        shutil.rmtree(leftover, ignore_errors=True)
    shutil.copytree(source, temporary)
    existed = target.exists()
    if existed:
        os.replace(target, replaced)
    os.replace(temporary, target)
    shutil.rmtree(replaced, ignore_errors=True)
    return existed


def trained_run(config: Config, location: DatasetLocation) -> Path:
    """The run folder notebook 04 trained; if there is none, train one now and say so.

    Looked for in the outputs folder, then, on Kaggle, among the notebook's inputs
    (:func:`attached_run`: notebook 04's saved output, attached with *Add Input*), which is
    copied into the outputs folder first. On a GPU the one trained is ``config``'s recipe
    (the full one unless ``config.quick``). On a CPU a full run would take hours, so unless
    ``config`` is already quick a clearly labelled quick run at 128 px is trained instead (a
    few minutes; 128 px rather than quick mode's 64 so that Grad-CAM maps have 4x4 cells,
    not 2x2).
    """
    import torch

    from helpers.train import train

    run_dir = notebook_run_dir()
    if (run_dir / "best.pt").is_file():
        print(f"using the run trained in notebook 04: {run_dir}")
        return run_dir
    attached = attached_run() if platforms.on_kaggle() else None
    if attached is not None:
        run_dir.parent.mkdir(parents=True, exist_ok=True)
        replaced = _copy_run(attached, run_dir)
        print(f"using the run trained in notebook 04, attached as an input: {attached}")
        print(f"  copied to {run_dir}")
        if replaced:
            print(f"  (it replaced {run_dir}, an unfinished run (no best.pt))")
        return run_dir
    recipe = config
    if not (config.quick or torch.cuda.is_available()):
        recipe = config.quick_mode().replace(image_size=128)
    kind = "the QUICK recipe" if recipe.quick else "the full recipe"
    print(
        f"no trained run in {run_dir} (notebook 04 has not run on this machine, or its outputs "
        f"were not kept): training {kind} now, {recipe.image_size} px, up to {recipe.epochs} "
        "epochs. Its numbers are those of this short run, not the article's."
    )
    train(recipe, run_dir, location.root)
    return run_dir


def ensure_packages(*modules: str, extra: str = "export") -> None:
    """Make optional packages importable: install them on Colab or Kaggle, else say how.

    ``modules`` are import names; ``extra`` is this project's optional-dependency group that
    lists them (``pip install "pneumonia-tutorial[export]"`` on your own machine).
    """
    import importlib
    import importlib.util
    import subprocess
    import sys

    missing = [name for name in modules if importlib.util.find_spec(name) is None]
    if not missing:
        return
    if not platforms.on_cloud():
        raise ModuleNotFoundError(
            f'{", ".join(missing)} not installed: run pip install "pneumonia-tutorial[{extra}]" '
            '(or pip install -e ".[dev]" in a clone), then restart the kernel'
        )
    command = [sys.executable, "-m", "pip", "install", "--quiet", *missing]
    pip = subprocess.run(command, capture_output=True, text=True)
    importlib.invalidate_caches()  # so that the new packages are found by this kernel
    if pip.returncode:
        tail = "\n".join((pip.stdout + pip.stderr).strip().splitlines()[-10:])
        raise ModuleNotFoundError(
            f"could not install {', '.join(missing)} (pip's last lines:\n{tail}\n): is the "
            "notebook's internet on?"
        )


# --- running the series -------------------------------------------------------------------


def notebooks_dir() -> Path:
    """The ``notebooks/`` folder of the checkout."""
    return project_root() / "notebooks"


def _write_notebook_atomic(nb: Any, path: Path) -> None:
    """Write a notebook as JSON to a temporary file beside ``path``, then rename it."""
    import nbformat

    atomic_write_text(path, nbformat.writes(nb))


def _failed_cell(nb: Any) -> tuple[int, str, str]:
    """``(index, first source line, "Name: message")`` of the first cell with an error output."""
    for index, cell in enumerate(nb.cells):
        for output in cell.get("outputs", []):
            if output.get("output_type") == "error":
                lines = [line for line in cell.source.splitlines() if line.strip()]
                return index, lines[0] if lines else "", f"{output.ename}: {output.evalue}"
    return -1, "", ""


def _execute(source: Path, target: Path, timeout: int) -> float:
    """Run one notebook with its folder as working directory; save it with outputs.

    The executed copy is written even when a cell fails (with the error in it), then a
    :class:`NotebookError` names the notebook and the failing cell. Returns seconds taken.
    """
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError, CellTimeoutError, DeadKernelError

    nb = nbformat.read(source, as_version=4)
    client = NotebookClient(
        nb,
        timeout=timeout,
        kernel_name="python3",
        resources={"metadata": {"path": str(source.parent)}},
    )
    started = time.perf_counter()
    try:
        client.execute()
    except (CellExecutionError, CellTimeoutError, DeadKernelError) as err:
        _write_notebook_atomic(nb, target)
        index, first_line, error = _failed_cell(nb)
        if index < 0:  # a timeout or a dead kernel leaves no error output in the cell
            error = f"{type(err).__name__}: {str(err).strip().splitlines()[0][:300]}"
        where = f"cell {index} (0-based, counting markdown cells)" if index >= 0 else "a cell"
        raise NotebookError(
            f"{source.name}: {where} failed: `{first_line}`\n  {error}\n"
            f"  executed copy with the error: {target}"
        ) from err
    _write_notebook_atomic(nb, target)
    return time.perf_counter() - started


def run_notebooks(
    quick: bool,
    data: Path | None,
    out: Path | None = None,
    *,
    only: Sequence[str] | None = None,
    folder: Path | None = None,
    timeout: int = CELL_TIMEOUT_S,
) -> Path:
    """Execute the notebooks in order; return the folder holding the executed copies.

    * ``quick``: ``PNEUMONIA_QUICK=1`` for the kernels (small images, few epochs); when
      False it is ``0``, so the full recipe runs whatever the shell says.
    * ``data``: the dataset folder. The dataset is located once, here (``data``, else the
      usual search of :func:`helpers.data.find_dataset`, demo fallback included), and passed
      to every kernel as ``PNEUMONIA_DATA_DIR``, so all notebooks use the same images.
    * ``out``: where executed copies (with outputs) go, default ``outputs_dir()/"notebooks"``;
      figures go where the notebooks save them (``outputs_dir()/"figures"``).
    * ``only``: notebook file names to run (in the order given) instead of all of
      :data:`NOTEBOOKS`; ``folder``: where they are (default ``notebooks/``).

    Each notebook runs with its own folder as working directory, as Jupyter does. Stops at
    the first failure with a :class:`NotebookError` naming the notebook and the cell. The
    environment is restored afterwards.
    """
    from helpers.plots import figures_dir

    folder = Path(folder) if folder is not None else notebooks_dir()
    out = Path(out) if out is not None else outputs_dir() / "notebooks"
    names = list(only) if only is not None else list(NOTEBOOKS)
    missing = [name for name in names if not (folder / name).is_file()]
    if missing:
        raise FileNotFoundError(f"{folder}: no notebook named {', '.join(missing)}")
    location = find_dataset(data)
    demo = location.is_demo
    settings = {
        "PNEUMONIA_QUICK": "1" if quick else "0",
        "PNEUMONIA_DATA_DIR": str(Path(location.root).expanduser().resolve()),
    }
    print(f"data: {location.root}" + ("  (SYNTHETIC DEMO DATA, not X-rays)" if demo else ""))
    # The kernels nbclient starts inherit os.environ; patch.dict restores it afterwards. The
    # kernel keeps its own inline matplotlib backend, so executed copies keep their figures.
    with mock.patch.dict(os.environ, settings):
        os.environ.pop("MPLBACKEND", None)
        for name in names:
            print(f"running {name} ...", flush=True)
            seconds = _execute(folder / name, out / name, timeout)
            print(f"  done in {seconds:.1f} s")
    print(f"executed notebooks (with outputs): {out}")
    print(f"figures: {figures_dir()}")
    if demo:
        print(
            "note: this ran on the synthetic demo dataset; its numbers and figures are not "
            "medical results (see data/README.md for the real X-rays)"
        )
    return out
