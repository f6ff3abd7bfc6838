"""Where the notebook runs: a Kaggle kernel, Google Colab, or anywhere else.

Checked in this order, because a Kaggle kernel looks like Colab from the outside:

* **Kaggle** sets ``KAGGLE_KERNEL_RUN_TYPE`` in every kernel (``Interactive``, or ``Batch``
  for "Save Version"); kagglehub and Kaggle's own SDK detect a Kaggle notebook by that
  variable (``kagglehub/env.py``, ``kagglesdk/kaggle_env.py``).
* **Colab** is recognised only by its kernel: Colab's kernel runs the shell class
  ``google.colab._shell.Shell`` (colabtools, ``google/colab/_kernel.py``), so
  ``"google.colab" in str(get_ipython())``, the test kagglehub adopted in v0.3.10
  (kagglehub PR 230, ``kagglehub/env.py``). A ``/content`` folder or an importable
  ``google.colab`` package proves nothing: Kaggle's image is built from Colab's runtime
  image (the ``FROM`` line of Kaggle/docker-python's ``Dockerfile.tmpl``), so both can exist
  in a Kaggle kernel, where mounting Google Drive or opening an upload widget would fail or
  block a batch run.

The notebooks' setup cell repeats the Kaggle and Colab tests as one inline expression (it
runs before this package is installed); a test checks that both agree.
"""

from __future__ import annotations

import os
import sys

KAGGLE = "kaggle"
COLAB = "colab"
LOCAL = "local"


def on_kaggle() -> bool:
    """True in a Kaggle notebook (interactive session or a "Save Version" batch run)."""
    return "KAGGLE_KERNEL_RUN_TYPE" in os.environ


def _ipython_shell() -> object | None:
    """The running IPython shell, or None outside IPython (a script, pytest, the CLI)."""
    ipython = sys.modules.get("IPython")
    if ipython is None:
        return None
    get = getattr(ipython, "get_ipython", None)
    return get() if get is not None else None


def on_colab() -> bool:
    """True only when this kernel is Colab's own (never in a Kaggle kernel)."""
    return not on_kaggle() and "google.colab" in str(_ipython_shell())


def where() -> str:
    """``"kaggle"``, ``"colab"`` or ``"local"`` (a laptop, a server, CI)."""
    if on_kaggle():
        return KAGGLE
    if on_colab():
        return COLAB
    return LOCAL


def on_cloud() -> bool:
    """True on Kaggle or Colab, where a notebook may install packages it lacks."""
    return where() != LOCAL
