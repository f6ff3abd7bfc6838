"""What the unit tests (``tests/``) and the notebook runs (``notebooks/``) share: the demo
dataset they all use, made once.

It is the 600-image demo dataset (seed 7, the notebooks' default). It is kept in pytest's cache
folder (``.pytest_cache/d/``), named by a hash of the generator's source, so a second ``pytest``
on the same checkout finds it instead of drawing it again (about 8 s), and a change to
``helpers/demo.py`` draws a new one (the session removes the cache's other ``demo-*`` folders,
drawn by other versions). Two sessions starting at once both draw it; the later keeps the
first one's (``helpers.demo.make_demo_dataset``). Without the cache plugin
(``-p no:cacheprovider``) it goes to a temporary folder, once per session. Tests must not change
it: copy it first.
"""

from __future__ import annotations

import functools
import hashlib
import shutil
import tempfile
from pathlib import Path

import pytest

DEMO_IMAGES, DEMO_SEED = 600, 7


def pytest_configure(config: pytest.Config) -> None:
    config.demo_dataset = functools.cache(functools.partial(_demo_dataset, config))


def _demo_dataset(config: pytest.Config) -> Path:
    """The session's demo dataset (drawn on first use)."""
    import helpers.demo

    source = hashlib.sha256(Path(helpers.demo.__file__).read_bytes()).hexdigest()[:12]
    cache = getattr(config, "cache", None)
    if cache is None:
        folder = Path(tempfile.mkdtemp(prefix="pneumonia-demo-"))
    else:
        folder = cache.mkdir(f"demo-{DEMO_IMAGES}-{DEMO_SEED}-{source}")
        for older in folder.parent.glob("demo-*"):  # drawn by another helpers/demo.py
            if older != folder:
                shutil.rmtree(older, ignore_errors=True)
    return helpers.demo.make_demo_dataset(folder, n_images=DEMO_IMAGES, seed=DEMO_SEED)
