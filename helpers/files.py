"""Atomic file writing: a reader (or a crash) never sees half a file.

Every file the project writes (checkpoints, history, JSON, figures, notebooks, exports) goes
to a temporary name in the destination folder and is renamed over the final name only once
complete; a rename within one folder is atomic, so the old file or the new one is there,
never a mix. A kill leaves at most a hidden ``.NAME.*.tmp`` file, which readers ignore.

Files written once per input image (Grad-CAM overlays, the picture the model saw) are named
by :func:`per_image_name`, so that two images never write to one file.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it to ``path``.

    For writers that want a file name (``savefig``, ``torch.jit.save``, ONNX export). On any
    exception (including ``KeyboardInterrupt``) the temporary file is removed and ``path`` is
    left as it was. The file gets the usual permissions (``0o666`` less the umask), not the
    private ``0o600`` of ``mkstemp``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_bytes(path: str | Path, payload: bytes) -> None:
    """Write ``payload`` to ``path`` atomically (flushed to disk before the rename)."""
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        fh.write(payload)
        fh.flush()
        os.fsync(fh.fileno())


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write UTF-8 ``text`` to ``path`` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


def per_image_name(path: str | Path, kind: str, suffix: str = ".png") -> str:
    """``<stem>-<hash>-<kind><suffix>``: the name of a file written for the image at ``path``.

    The hash (8 hex digits of the SHA-1 of the full, resolved path) keeps apart images that
    share a name in different folders (``NORMAL/x.jpeg`` and ``PNEUMONIA/x.jpeg``) or differ
    only in their suffix, which a name made of the stem alone would overwrite with each other.
    ``kind`` says what the file holds (``gradcam``, ``input``).
    """
    digest = hashlib.sha1(str(Path(path).resolve()).encode("utf-8")).hexdigest()[:8]
    return f"{Path(path).stem}-{digest}-{kind}{suffix}"
