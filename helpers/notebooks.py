"""The notebook series: what each notebook prints first, and running all of them in order.

Two halves, for two audiences:

* :func:`show_setup` and :func:`uses_demo_data` are called *inside* the notebooks, so that every
  notebook opens with the same short report of which data, which recipe and where outputs go,
  without copying that code from notebook to notebook.
* :func:`run_notebooks` (``python -m helpers run-notebooks``) executes ``01``-``05`` top to
  bottom with ``nbclient``, keeps executed copies *with* their outputs under
  ``outputs/notebooks`` and stops at the first failing cell with an error naming it. The
  notebooks in ``notebooks/`` stay clean (no outputs): git only ever sees the teaching text
  and code.

``nbclient`` and ``nbformat`` are development dependencies, imported only by
:func:`run_notebooks`, so the notebooks themselves (on Colab or Kaggle) do not need them.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from helpers.config import Config, outputs_dir, project_root
from helpers.data import DatasetLocation, find_dataset, is_demo_folder
from helpers.files import atomic_write_text

NOTEBOOKS: tuple[str, ...] = (
    "01_dataset_eda.ipynb",
    "02_preprocessing.ipynb",
    "03_model.ipynb",
    "04_training.ipynb",
    "05_evaluation.ipynb",
)
"""The series, in the order it must run (04 trains the run that 05 evaluates)."""

CELL_TIMEOUT_S = 1800
"""Per-cell limit for :func:`run_notebooks`: generous, the full recipe trains in one cell."""


class NotebookError(RuntimeError):
    """A notebook failed; the message names the notebook, the cell and the error."""


# --- inside the notebooks -----------------------------------------------------------------


def uses_demo_data(location: DatasetLocation) -> bool:
    """True when ``location`` is the synthetic demo dataset, however it was found.

    A thin wrapper kept for the notebooks' readability: ``find_dataset`` flags its own demo
    fallback and any folder carrying the demo generator's marker (:func:`is_demo_folder`).
    """
    return location.is_demo or is_demo_folder(location.root)


def show_setup(config: Config, location: DatasetLocation) -> None:
    """Print the few facts a reader needs before trusting any output of a notebook.

    Which data (and whether it is the synthetic demo, loudly), the quick or full recipe with
    its image size and epochs, and where caches, runs and figures are written.
    """
    print(f"data:    {location.root}  (found via: {location.source})")
    if uses_demo_data(location):
        print(
            "*** SYNTHETIC DEMO DATA: drawn images, not X-rays. Everything below runs, but no "
            "number or figure from it says anything about pneumonia. See data/README.md for the "
            "real dataset. ***"
        )
    mode = (
        "QUICK (PNEUMONIA_QUICK=1: small images, few epochs, a subset)" if config.quick else "full"
    )
    size = f"{config.image_size}x{config.image_size}"
    print(f"recipe:  {mode}; images {size}, up to {config.epochs} epochs, seed {config.seed}")
    print(f"outputs: {outputs_dir()}")


# --- running the series -------------------------------------------------------------------


def notebooks_dir() -> Path:
    """The ``notebooks/`` folder of the checkout."""
    return project_root() / "notebooks"


@contextmanager
def _environment(changes: dict[str, str | None]) -> Iterator[None]:
    """Set (value) or remove (``None``) environment variables, restoring them afterwards.

    The kernels ``nbclient`` starts inherit ``os.environ``, so this is how settings reach
    the notebooks.
    """
    saved = {name: os.environ.get(name) for name in changes}
    try:
        for name, value in changes.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


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
      False the variable is removed, so the full recipe runs whatever the shell says.
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
    demo = uses_demo_data(location)
    changes: dict[str, str | None] = {
        "PNEUMONIA_QUICK": "1" if quick else None,
        "PNEUMONIA_DATA_DIR": str(Path(location.root).expanduser().resolve()),
        # Let the kernel use its inline backend, so executed copies keep their figures.
        "MPLBACKEND": None,
    }
    print(f"data: {location.root}" + ("  (SYNTHETIC DEMO DATA, not X-rays)" if demo else ""))
    with _environment(changes):
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
