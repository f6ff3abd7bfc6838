"""Where the dataset comes from: a folder given, the project's ``data/``, Kaggle, or the demo.

:func:`find_dataset` tries, in order, the folder it is given, ``PNEUMONIA_DATA_DIR``,
``data/chest_xray`` in the project, a dataset attached to a Kaggle notebook, and a
``kagglehub`` download (with the Kaggle credentials of a Colab notebook's secrets); when all
fail it generates the synthetic demo dataset and says so loudly. A refused download stops
with what to do, never with a silent fallback.
"""

from __future__ import annotations

import os
import socket
import sys
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path

from helpers.config import KAGGLE_DATASET, outputs_dir, project_root
from helpers.data import DatasetError, resolve_layout

KAGGLE_INPUT = Path("/kaggle/input")


@dataclass(frozen=True)
class DatasetLocation:
    """Where the data was found and how: ``source`` in argument, env, project, kaggle-input,
    kagglehub or demo."""

    root: Path
    source: str

    @property
    def is_demo(self) -> bool:
        """True for the synthetic demo dataset (never to be read as medical results), however
        it was found: the fallback, or a demo folder given explicitly (:func:`is_demo_folder`)."""
        return is_demo_folder(self.root)


def network_answers(host: str = "www.kaggle.com", port: int = 443, timeout: float = 3.0) -> bool:
    """True when a TCP connection to ``host`` opens within ``timeout`` seconds.

    The name lookup is bounded too (it runs in a helper thread that is abandoned after
    ``timeout``): an offline machine's resolver can otherwise take several seconds to give up.
    """
    answered = threading.Event()

    def connect() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout):
                answered.set()
        except OSError:
            pass

    worker = threading.Thread(target=connect, daemon=True)
    worker.start()
    worker.join(timeout)
    return answered.is_set()


def _kaggle_input_dataset() -> Path | None:
    """The dataset attached to a Kaggle notebook (``/kaggle/input/<name>/chest_xray``), if any."""
    if not KAGGLE_INPUT.is_dir():
        return None
    for candidate in sorted(KAGGLE_INPUT.iterdir()):
        try:
            resolve_layout(candidate)
            return candidate
        except DatasetError:
            continue
    return None


def download_with_kagglehub() -> Path:
    """Download the dataset with ``kagglehub`` (cached by kagglehub after the first time).

    Needs Kaggle credentials: ``kagglehub.login()``, ``~/.kaggle/kaggle.json`` or the
    ``KAGGLE_USERNAME``/``KAGGLE_KEY`` variables (Colab: add them as secrets).
    """
    import kagglehub  # optional dependency: pip install kagglehub

    _credentials_from_colab_secrets()
    try:
        return Path(kagglehub.dataset_download(KAGGLE_DATASET))
    except Exception as err:  # kagglehub raises several types; turn them into one message
        text = str(err)
        if "401" in text or "403" in text or "Unauthorized" in text or "Forbidden" in text:
            raise DatasetError(
                f"Kaggle refused the download of {KAGGLE_DATASET} ({text.strip()[:200]}). "
                "On Colab: add KAGGLE_USERNAME and KAGGLE_KEY (from kaggle.com > Settings > "
                "Create New Token) in the Secrets panel (key icon) and give this notebook "
                "access; on Kaggle: attach the dataset with Add Input instead; elsewhere: "
                "set those two variables, run kagglehub.login(), or download the zip by hand "
                "(data/README.md). A 403 also means: open the dataset page once and accept "
                "its terms."
            ) from err
        raise DatasetError(
            f"kagglehub could not download {KAGGLE_DATASET}: {text.strip()[:300]}"
        ) from err


def _credentials_from_colab_secrets() -> None:
    """On Colab, copy the ``KAGGLE_USERNAME``/``KAGGLE_KEY`` secrets into the environment.

    Colab keeps secrets (the key icon in the left panel) out of ``os.environ``; kagglehub reads
    the environment. Variables already set win; a missing or unshared secret is skipped (then
    kagglehub tries ``~/.kaggle/kaggle.json`` and a refusal says what to do).
    """
    try:
        from google.colab import userdata  # only exists on Colab
    except ImportError:
        return
    for name in ("KAGGLE_USERNAME", "KAGGLE_KEY"):
        if os.environ.get(name):
            continue
        try:
            value = userdata.get(name)
        except Exception:  # SecretNotFoundError, NotebookAccessError: not given to this notebook
            print(
                f"Colab secret {name} not available: add it in the key panel (or kagglehub.login())"
            )
            continue
        if value:
            os.environ[name] = value


def find_dataset(
    path: str | Path | None = None, *, download: bool = True, demo_images: int = 600
) -> DatasetLocation:
    """Find the dataset, in this order, and say where it came from.

    1. ``path`` (argument), then ``PNEUMONIA_DATA_DIR``: must exist, else an error.
    2. ``data/chest_xray`` in the project.
    3. A Kaggle notebook's attached input (``/kaggle/input/...``).
    4. ``kagglehub`` download, when it is installed and kaggle.com answers (checked with a
       3-second connection attempt, so offline machines never hang).
    5. Otherwise the synthetic demo dataset, generated once under ``outputs/demo-data``, with
       a loud message: results on it are not medical results.
    """
    explicit = [(path, "argument"), (os.environ.get("PNEUMONIA_DATA_DIR") or None, "env")]
    for candidate, source in explicit:
        if candidate is not None:
            resolve_layout(candidate)  # raises with the reason when unusable
            root = Path(candidate).expanduser()
            return DatasetLocation(root, source)
    local = project_root() / "data" / "chest_xray"
    if local.is_dir():
        return DatasetLocation(local, "project")
    kaggle = _kaggle_input_dataset()
    if kaggle is not None:
        return DatasetLocation(kaggle, "kaggle-input")
    if download and _kagglehub_available() and network_answers():
        return DatasetLocation(download_with_kagglehub(), "kagglehub")
    from helpers.demo import make_demo_dataset

    root = make_demo_dataset(outputs_dir() / "demo-data", n_images=demo_images)
    message = (
        "*** The real dataset was not found: using the SYNTHETIC demo dataset in "
        f"{root}. Numbers and figures from it are not medical results. To use the real X-rays, "
        "see data/README.md (Kaggle download into data/chest_xray, or set PNEUMONIA_DATA_DIR). ***"
    )
    warnings.warn(message, stacklevel=2)
    print(message, file=sys.stderr)
    return DatasetLocation(root, "demo")


def is_demo_folder(root: str | Path) -> bool:
    """True when ``root`` (or the folder holding its splits) carries the demo generator's
    marker: the one test of "is this synthetic?" used everywhere (a location, a run's data)."""
    from helpers.demo import MARKER

    try:
        splits = resolve_layout(root)
    except DatasetError:
        return False
    candidates = {Path(root), *(folder.parent for folder in splits.values())}
    return any((folder / MARKER).is_file() for folder in candidates)


def _kagglehub_available() -> bool:
    try:
        import kagglehub  # noqa: F401
    except ImportError:
        return False
    return True
