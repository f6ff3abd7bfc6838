"""What this machine can reach: a server (within a timeout) and the ImageNet weights.

Two questions asked before anything heavy starts: which recipe to use (the article's needs the
ImageNet weights, :func:`helpers.config.config_from_env`) and whether to try a Kaggle download
(:func:`helpers.sources.find_dataset`). Both must answer fast and never hang an offline
machine. This module sits at the bottom of the package, beside :mod:`helpers.config`, and
imports no other module of it; torch and torchvision are imported inside the functions, so
that importing :mod:`helpers.config` does not import torch.
"""

from __future__ import annotations

import socket
import threading
from pathlib import Path
from typing import Any
from urllib.parse import urlparse


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


def imagenet_weights() -> Any:
    """The torchvision weights entry the series uses (``MobileNet_V3_Small_Weights.IMAGENET1K_V1``,
    ImageNet-1k, top-1 67.7 %)."""
    import torchvision

    return torchvision.models.MobileNet_V3_Small_Weights.IMAGENET1K_V1


def weights_cache_path() -> Path:
    """Where torchvision keeps (and looks for) the ImageNet weights file.

    ``<torch.hub.get_dir()>/checkpoints/<file name of the URL>``, i.e. by default
    ``~/.cache/torch/hub/checkpoints/mobilenet_v3_small-047dcff4.pth`` or
    ``$TORCH_HOME/hub/checkpoints/...`` when ``TORCH_HOME`` is set. Copying the file there
    by hand is the offline way to get ImageNet weights.
    """
    import torch

    file_name = Path(urlparse(imagenet_weights().url).path).name
    return Path(torch.hub.get_dir()) / "checkpoints" / file_name


def imagenet_weights_reachable(timeout: float = 1.5) -> bool:
    """True when the ImageNet weights are in torchvision's cache, or their server answers
    within ``timeout`` seconds (so a download can be tried; it still may fail)."""
    if weights_cache_path().is_file():
        return True
    return network_answers(urlparse(imagenet_weights().url).hostname, 443, timeout)
