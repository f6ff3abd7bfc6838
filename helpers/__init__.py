"""Shared code for the pneumonia-tutorial notebooks and the ``python -m helpers`` command line.

One module per concern; ``docs/architecture.md`` is the map. Importing the package changes
nothing in the process: platform-dependent choices (torch's CPU threads, the autocast dtype,
where outputs go) are explicit calls (:func:`helpers.cpu.use_idle_cores`, made by the command
line and the notebooks' setup cell; :func:`helpers.recipe.autocast_dtype`;
:func:`helpers.notebooks.keep_outputs`).
"""

import importlib.metadata

from helpers.config import CLASSES, Config, config_from_env

__all__ = ["CLASSES", "Config", "config_from_env"]

try:  # the version lives in pyproject.toml only
    __version__ = importlib.metadata.version("pneumonia-tutorial")
except importlib.metadata.PackageNotFoundError:  # a checkout on sys.path that was never installed
    __version__ = "unknown"
