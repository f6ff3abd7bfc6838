"""Shared code for the pneumonia-tutorial notebooks and the ``python -m helpers`` command line.

One module per concern; ``docs/architecture.md`` is the map. Importing the package first
gives torch the machine's idle cores (:mod:`helpers.cpu`), so the command line and the
notebooks' setup cell import it before torch.
"""

from helpers.cpu import use_idle_cores

use_idle_cores()

from helpers.config import CLASSES, Config, config_from_env  # noqa: E402

__all__ = ["CLASSES", "Config", "config_from_env"]
__version__ = "0.2.0"
