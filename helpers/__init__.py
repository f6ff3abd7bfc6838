"""Shared code for the pneumonia-tutorial notebooks and the ``python -m helpers`` command line.

Each module owns one concern: ``config`` (the recipe), ``data`` (finding and scanning the
dataset, patient-grouped splits), ``demo`` (the synthetic demo dataset), ``preprocess``
(decode-once cache, transforms, batch augmentation), ``model`` (PneumoniaNet), ``train``
(the training engine), ``evaluate`` (metrics, thresholds, Grad-CAM), ``plots`` (every
figure) and ``cli`` (the command line).
"""

from helpers.config import CLASSES, Config, config_from_env

__all__ = ["CLASSES", "Config", "config_from_env"]
__version__ = "0.1.0"
