"""Where the dataset comes from: a folder given, the project's ``data/``, Kaggle, or the demo.

:func:`find_dataset` tries, in order, the folder it is given, ``PNEUMONIA_DATA_DIR``,
``data/chest_xray`` in the project, a dataset attached to a Kaggle notebook, and a
``kagglehub`` download (public: no credentials needed); when all fail it generates the
synthetic demo dataset and says so loudly. A refused download stops with what to do, never
with a silent fallback.
"""

from __future__ import annotations

import os
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

from helpers.config import KAGGLE_DATASET, outputs_dir, project_root
from helpers.data import DatasetError, resolve_layout
from helpers.online import network_answers  # (moved to the bottom layer: helpers.model uses it too)

KAGGLE_INPUT = Path("/kaggle/input")


@dataclass(frozen=True)
class DatasetLocation:
    """Where the data was found and how: ``source`` in argument, env, project, kaggle-input,
    kagglehub or demo. ``root`` is always absolute (resolved when the location is made), so
    that a run folder names its data in a way that holds from any working directory."""

    root: Path
    source: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root).expanduser().resolve())

    @property
    def is_demo(self) -> bool:
        """True for the synthetic demo dataset (never to be read as medical results), however
        it was found: the fallback, or a demo folder given explicitly (:func:`is_demo_folder`)."""
        return is_demo_folder(self.root)


def kaggle_input_roots(base: Path | None = None) -> list[Path]:
    """Where an attached dataset's files start under Kaggle's input folder, best first.

    Kaggle mounts an attached dataset at ``/kaggle/input/<mountSlug>``, the slug chosen by
    Kaggle's server (kagglehub's ``kaggle_cache_resolver.py``). Two shapes are in use:
    ``/kaggle/input/<slug>`` and, in notebooks from 2026 on, ``/kaggle/input/datasets/
    <owner>/<slug>`` (this dataset then sits at ``.../datasets/paultimothymooney/
    chest-xray-pneumonia``, as Kaggle users' own code shows; Kaggle documents neither). A
    ``versions/<n>`` level, the layout of kagglehub's download cache (``kagglehub/cache.py``),
    is searched too, newest version first. This project's dataset comes before any other.
    """
    base = KAGGLE_INPUT if base is None else Path(base)
    if not base.is_dir():
        return []
    slugs: list[Path] = []
    for entry in sorted(base.iterdir()):
        if not entry.is_dir():
            continue
        if entry.name in ("datasets", "notebooks"):  # <kind>/<owner>/<slug>
            slugs += [s for owner in _subfolders(entry) for s in _subfolders(owner)]
        else:
            slugs.append(entry)
    wanted = KAGGLE_DATASET.rsplit("/", 1)[-1]
    slugs.sort(key=lambda folder: folder.name != wanted)  # stable: this dataset first
    roots: list[Path] = []
    for slug in slugs:
        versions = [v for v in _subfolders(slug / "versions") if v.name.isdigit()]
        roots += sorted(versions, key=lambda v: int(v.name), reverse=True) or [slug]
    return roots


def _subfolders(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return [p for p in sorted(folder.iterdir()) if p.is_dir() and not p.name.startswith(".")]


def _kaggle_input_dataset() -> Path | None:
    """The chest X-ray dataset attached to a Kaggle notebook, if any (never a demo dataset
    that an attached notebook output happens to contain)."""
    for candidate in kaggle_input_roots():
        try:
            resolve_layout(candidate)
        except DatasetError:
            continue
        if not is_demo_folder(candidate):
            return candidate
    return None


CREDENTIAL_HELP = (
    "This dataset is public: kagglehub downloads it without any credentials. A refusal means "
    "the credentials kagglehub found were rejected: fix or remove them. kagglehub 0.4.1 and "
    "later take the API token made with 'Generate New Token' on kaggle.com/settings/api as "
    "KAGGLE_API_TOKEN (an environment variable, or a Colab secret of that name), or "
    "kagglehub.login(); the older username/key pair comes from 'Create Legacy API Key' "
    "(kaggle.json, or KAGGLE_USERNAME and KAGGLE_KEY). A new token in KAGGLE_KEY is sent as "
    "a legacy key. On Kaggle, attach the dataset with Add Input instead; anywhere, the zip "
    "can be downloaded by hand (data/README.md)."
)


def credentials_sent() -> str:
    """Which credential form kagglehub sends, in words, asked of kagglehub itself
    (``kagglehub.config.get_kaggle_credentials``: an API token goes as a bearer token, a
    username/key pair as HTTP Basic auth, per ``kagglesdk/kaggle_http_client.py``)."""
    try:
        from kagglehub.config import get_kaggle_credentials

        credentials = get_kaggle_credentials()
    except Exception as err:  # an unreadable kaggle.json raises; an old kagglehub may differ
        return f"unknown (kagglehub could not read its credentials: {err})"
    if credentials is None:
        return "none (an anonymous request)"
    if getattr(credentials, "api_key", None):
        return (
            "an API token (from KAGGLE_API_TOKEN, ~/.kaggle/access_token, kagglehub.login() "
            "or the Colab secret KAGGLE_API_TOKEN)"
        )
    return (
        "a legacy username/key pair (from KAGGLE_USERNAME/KAGGLE_KEY, ~/.kaggle/kaggle.json "
        "or the Colab secrets of those names), sent as HTTP Basic auth"
    )


def download_with_kagglehub() -> Path:
    """Download the dataset with ``kagglehub`` (cached by kagglehub after the first time).

    The dataset is public, so no credentials are needed; kagglehub still sends any it finds
    (its own order: a token in ``KAGGLE_API_TOKEN`` or ``~/.kaggle/access_token``, the
    ``KAGGLE_USERNAME``/``KAGGLE_KEY`` pair, ``~/.kaggle/kaggle.json``, then on Colab the
    secrets of those names: ``kagglehub/config.py``). It reads Colab secrets itself, so
    nothing here copies them into the environment, where they would outrank a correct token.
    In a Kaggle notebook kagglehub attaches the dataset under ``/kaggle/input`` instead.
    """
    import kagglehub  # optional dependency: pip install kagglehub

    try:
        return Path(kagglehub.dataset_download(KAGGLE_DATASET))
    except Exception as err:  # kagglehub raises several types; turn them into one message
        text = str(err)
        if "401" in text or "403" in text or "Unauthorized" in text or "Forbidden" in text:
            raise DatasetError(
                f"Kaggle refused the download of {KAGGLE_DATASET} ({text.strip()[:200]}). "
                f"Credentials kagglehub sent: {credentials_sent()}. {CREDENTIAL_HELP}"
            ) from err
        raise DatasetError(
            f"kagglehub could not download {KAGGLE_DATASET}: {text.strip()[:300]}"
        ) from err


def find_dataset(
    path: str | Path | None = None,
    *,
    download: bool = True,
    demo: bool = True,
    demo_images: int = 600,
) -> DatasetLocation:
    """Find the dataset, in this order, and say where it came from. With ``demo=False`` (the
    command line's ``train`` without ``--demo``) synthetic data is refused: a demo folder
    found by any route raises :class:`DatasetError`, and nothing is generated.

    1. ``path`` (argument), then ``PNEUMONIA_DATA_DIR``: must exist, else an error.
    2. ``data/chest_xray`` in the project.
    3. A Kaggle notebook's attached input (:func:`kaggle_input_roots`).
    4. ``kagglehub`` download, when it is installed and kaggle.com answers (checked with a
       3-second connection attempt, so offline machines never hang).
    5. Otherwise the synthetic demo dataset, generated once under ``outputs/demo-data``, with
       a loud message: results on it are not medical results.
    """
    found = _real_dataset(path, download)
    if found is not None:
        if not demo and found.is_demo:
            raise DatasetError(
                f"{found.root} is the SYNTHETIC demo dataset (drawn images, not X-rays): give "
                "--demo to train on it anyway, or --data with the real dataset (data/README.md)"
            )
        return found
    if not demo:  # the command line's train: no synthetic data unless asked for
        raise DatasetError(
            "the real dataset was not found (no --data, PNEUMONIA_DATA_DIR, data/chest_xray, "
            "Kaggle input or kagglehub download): see data/README.md, or give --demo to train "
            "on the SYNTHETIC demo dataset"
        )
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


def _real_dataset(path: str | Path | None, download: bool) -> DatasetLocation | None:
    """Steps 1-4 of :func:`find_dataset`: the dataset where it was put, or ``None``."""
    explicit = [(path, "argument"), (os.environ.get("PNEUMONIA_DATA_DIR") or None, "env")]
    for candidate, source in explicit:
        if candidate is not None:
            resolve_layout(candidate)  # raises with the reason when unusable
            return DatasetLocation(Path(candidate).expanduser(), source)
    local = project_root() / "data" / "chest_xray"
    if local.is_dir():
        return DatasetLocation(local, "project")
    kaggle = _kaggle_input_dataset()
    if kaggle is not None:
        return DatasetLocation(kaggle, "kaggle-input")
    if download and _kagglehub_available() and network_answers():
        return DatasetLocation(download_with_kagglehub(), "kagglehub")
    return None


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
