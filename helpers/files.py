"""Atomic file writing: a reader (or a crash) never sees half a file.

Every file the project writes (checkpoints, history, JSON, figures, notebooks, exports) goes
to a temporary name in the destination folder and is renamed over the final name only once
complete; a rename within one folder is atomic, so the old file or the new one is there,
never a mix. A kill leaves at most a hidden ``.NAME.*.tmp`` file, which readers ignore.
"""

from __future__ import annotations

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
