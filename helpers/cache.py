"""The decode-once cache: every image of a dataset decoded once into one memory-mapped array.

Decoding a 1-3 megapixel chest X-ray costs milliseconds; doing it for every image of every
epoch (what a plain ``ImageFolder`` pipeline does) dominates training time on a CPU. Once
resized, the images never change, so :func:`build_cache` decodes each **once** to a grey
``uint8`` square and stores all of them in one ``.npy`` array that training reads batches
from (:class:`helpers.loader.BatchLoader`). The files are named by a fingerprint of the
image files, the size and the intensity mode: a valid cache is reused, a changed one rebuilt.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import time
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from helpers.config import INTENSITY_CHOICES
from helpers.files import atomic_write_text
from helpers.images import DRAFT_FACTOR, ImageError, load_gray

CACHE_FORMAT_VERSION = 1
"""Bump when decoding changes, so that every existing cache is rebuilt."""

READ_ATTEMPTS = 3
"""How often a file that cannot be *read* (an I/O error, a network drive dropping out: an
:class:`helpers.images.ImageReadError`) is tried while a cache is built, 0.5 s apart. If it
still fails it is recorded as failed but not permanent, and tried again every time the cache
is opened; a file whose *content* is bad fails the same way every time and is not retried."""

DECODE_WORKERS = 2
"""Threads decoding while the cache is built. Pillow releases the GIL while decoding and
resizing, so a second thread helps on two idle cores (``benchmarks/README.md``); more would
only compete with the rest of the machine."""


class ImageCache:
    """A built cache: every image as one row of a read-only memory-mapped uint8 array.

    Attributes: ``array`` (memmap ``(N, size, size)``), ``paths`` (list of str, row order),
    ``ok`` (bool array, False where decoding failed; those rows are zeros), ``failed`` (list of
    ``{"path", "reason", "permanent"}``; ``permanent`` is False for a file that could not be
    read, which is retried when the cache is next opened), ``size``, ``path`` (the ``.npy``
    file), ``index_path`` (its JSON).
    """

    def __init__(self, npy_path: Path, index: dict[str, Any]) -> None:
        self.path = Path(npy_path)
        self.index_path = self.path.with_suffix(".json")
        self.array: np.ndarray = np.load(self.path, mmap_mode="r", allow_pickle=False)
        self.paths: list[str] = list(index["paths"])
        self.size: int = int(index["size"])
        self.ok: np.ndarray = np.asarray(index["ok"], dtype=np.bool_)
        self.failed: list[dict[str, str]] = list(index["failed"])
        self.fingerprint: str = index["fingerprint"]
        self._row = {p: i for i, p in enumerate(self.paths)}
        expected = (len(self.paths), self.size, self.size)
        if self.array.shape != expected or self.array.dtype != np.uint8:
            raise ValueError(
                f"{self.path}: cache array is {self.array.dtype} {self.array.shape}, "
                f"index says uint8 {expected}"
            )

    def __len__(self) -> int:
        return len(self.paths)

    def __repr__(self) -> str:
        return (
            f"ImageCache({len(self)} images at {self.size}x{self.size}, "
            f"{len(self.failed)} failed, {self.path})"
        )

    def index_of(self, path: str | Path) -> int:
        """Row of ``path`` (as given to :func:`build_cache`); ``KeyError`` if not cached."""
        try:
            return self._row[str(path)]
        except KeyError:
            raise KeyError(f"{path} is not in the cache {self.path}") from None

    def batch(
        self, indices: Sequence[int] | np.ndarray, *, pin_memory: bool = False
    ) -> torch.Tensor:
        """Rows ``indices`` as a uint8 tensor ``(B, 1, S, S)``, in the order given.

        Rows are gathered in ascending order straight into the output tensor (one copy;
        ``pin_memory`` makes it page-locked for fast non-blocking GPU copies). Unsorted
        ``indices`` cost one extra reorder copy.
        """
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        n_rows = len(self.paths)
        if idx.size and (idx.min() < 0 or idx.max() >= n_rows):
            raise IndexError(f"cache rows must be in [0, {n_rows}); got {idx.min()}..{idx.max()}")
        order = None
        if idx.size > 1 and np.any(idx[1:] < idx[:-1]):
            order = np.argsort(idx, kind="stable")
            idx = idx[order]
        out = torch.empty(
            (idx.size, 1, self.size, self.size), dtype=torch.uint8, pin_memory=pin_memory
        )
        # mode="clip" (bounds already checked) lets numpy write into `out` without a buffer.
        np.take(self.array, idx, axis=0, out=out.numpy()[:, 0], mode="clip")
        if order is not None:
            inverse = torch.from_numpy(np.argsort(order))
            out = out[inverse]
            if pin_memory:
                out = out.pin_memory()
        return out


def cache_fingerprint(paths: Sequence[str | Path], size: int, intensity: str = "none") -> str:
    """sha1 of the format version, the size, the intensity mode and each file's (path, bytes,
    mtime_ns).

    Any added, removed, renamed, rewritten or touched file, another size or another intensity
    normalisation changes it.
    Missing files are part of the fingerprint too (they will be recorded as failed).
    """
    digest = hashlib.sha1()
    header = {"format_version": CACHE_FORMAT_VERSION, "size": size, "intensity": intensity}
    digest.update(json.dumps(header).encode())
    for p in paths:
        try:
            stat = os.stat(p)
            entry = f"{p}\0{stat.st_size}\0{stat.st_mtime_ns}\n"
        except OSError:
            entry = f"{p}\0missing\n"
        digest.update(entry.encode("utf-8", "surrogateescape"))
    return digest.hexdigest()


def _open_existing(
    npy_path: Path, index_path: Path, fingerprint: str, n: int, size: int
) -> ImageCache | None:
    """The cache at ``npy_path`` if its index exists and matches; otherwise None (rebuild).

    The index is written last, so a missing or mismatching index means the array may be
    incomplete and is never trusted.
    """
    if not (index_path.is_file() and npy_path.is_file()):
        return None
    try:
        index = json.loads(index_path.read_text(encoding="utf-8"))
        if (
            index.get("format_version") != CACHE_FORMAT_VERSION
            or index.get("fingerprint") != fingerprint
            or index.get("size") != size
            or len(index.get("paths", ())) != n
        ):
            return None
        return ImageCache(npy_path, index)
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _retry_unread(cache: ImageCache, index_path: Path, intensity: str) -> ImageCache:
    """Try again the files the cache could not *read* when it was built (``permanent`` False;
    an index written before that flag existed counts every failure as retryable). Rows that
    decode now are written into the array and the index is rewritten atomically; a file with
    bad content stays failed without being decoded again."""
    # A file that is gone stays failed without waiting on it: its fingerprint says "missing",
    # so if it comes back the cache is a new one anyway.
    retry = [f for f in cache.failed if not f.get("permanent", False) and os.path.exists(f["path"])]
    if not retry:
        return cache
    index = json.loads(index_path.read_text(encoding="utf-8"))
    array = np.load(cache.path, mmap_mode="r+", allow_pickle=False)
    failed = [f for f in cache.failed if f not in retry]
    for entry in retry:
        result = _decode_with_retries(entry["path"], cache.size, intensity)
        if isinstance(result, dict):
            failed.append({"path": entry["path"], **result})
            continue
        row = cache.index_of(entry["path"])
        array[row] = result
        index["ok"][row] = True
    array.flush()
    del array
    index["failed"] = failed
    atomic_write_text(index_path, json.dumps(index, indent=1))
    return ImageCache(cache.path, index)


STALE_TEMP_SECONDS = 6 * 3600
"""A temporary cache file older than this is an interrupted build whatever its name says (a
full-resolution build of the whole dataset takes minutes, not hours)."""


def host_tag() -> str:
    """This machine's name as it goes into a temporary file name (letters, digits, ``_``)."""
    return re.sub(r"[^A-Za-z0-9]", "_", socket.gethostname() or "unknown")[:64]


def temp_name(npy_path: Path) -> Path:
    """The temporary file a build writes: ``<stem>.npy.tmp-<host>-<pid>``."""
    return npy_path.with_name(f"{npy_path.name}.tmp-{host_tag()}-{os.getpid()}")


def _writer(temp: Path) -> tuple[str, int | None]:
    """``(host, pid)`` from a temporary file's name (host ``""`` for the older
    ``.tmp-<pid>`` names, which did not record it)."""
    host, _, pid = temp.name.split(".npy.tmp-", 1)[-1].rpartition("-")
    return host, int(pid) if pid.isdigit() else None


def _can_check_processes() -> bool:
    """Whether :func:`_process_alive` can ask the OS. On Windows ``os.kill(pid, 0)`` is no
    probe: signal 0 is ``CTRL_C_EVENT`` there, sent to the process (Python's ``os.kill``
    documentation), so liveness is not judged on Windows."""
    return os.name == "posix"


def _process_alive(pid: int) -> bool:
    """True when a process with this id exists on this machine (POSIX: signal 0 is a probe)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def remove_interrupted_builds(cache_dir: Path) -> list[Path]:
    """Delete the temporary arrays of cache builds that were killed; return what was removed.

    A build writes ``<stem>.npy.tmp-<host>-<pid>`` (:func:`temp_name`) and renames it when
    complete, so a leftover file means its build died (a kill, a crash, a closed Colab tab)
    or is still running. A file written on this machine, on a POSIX system, is removed when
    its process is gone. Any other file, written by another machine into a shared folder (a
    Google Drive used by two sessions, a network drive), by a process whose liveness cannot
    be checked here (Windows), or with an older name without the host, is removed only once
    it is older than :data:`STALE_TEMP_SECONDS`: a process id means nothing on another
    machine. A file whose writer is still running is a build in progress, left alone.
    """
    removed = []
    now = time.time()
    here = host_tag()
    for temp in Path(cache_dir).glob("*.npy.tmp-*"):
        host, pid = _writer(temp)
        try:
            if host == here and pid is not None and _can_check_processes():
                stale = not _process_alive(pid)
            else:
                stale = False
            if stale or now - temp.stat().st_mtime > STALE_TEMP_SECONDS:
                temp.unlink()
                removed.append(temp)
        except OSError:  # removed meanwhile by another build
            continue
    return removed


def _decode_with_retries(path: str, size: int, intensity: str) -> np.ndarray | dict[str, Any]:
    """:func:`load_gray`, returning ``{"reason", "permanent"}`` instead of raising (for the
    pool). A file that cannot be read is tried :data:`READ_ATTEMPTS` times."""
    for attempt in range(READ_ATTEMPTS):
        try:
            return load_gray(path, size, intensity=intensity)
        except ImageError as err:
            if err.permanent or attempt == READ_ATTEMPTS - 1:
                return {"reason": err.reason, "permanent": err.permanent}
            time.sleep(0.5)
    raise AssertionError("unreachable")


def build_cache(
    paths: Sequence[str | Path],
    size: int,
    cache_dir: Path,
    progress: bool = True,
    *,
    workers: int = DECODE_WORKERS,
    intensity: str = "none",
) -> ImageCache:
    """Decode every image once to uint8 ``size x size`` and store them in one ``.npy`` array.

    The files are named by :func:`cache_fingerprint`, so a valid existing cache is reused
    without decoding anything, and a changed dataset or size builds a new one. The array is
    written through ``open_memmap`` (bounded memory) under a temporary name and renamed when
    complete; the JSON index (``paths``, ``size``, ``ok``, ``failed``, ``fingerprint``,
    ``format_version``) is renamed into place last, and only an index makes a cache valid.
    Images that fail to decode get a zero row, ``ok=False`` and their reason in ``failed``;
    a one-line warning gives the count. Only bad *content* is kept as a failure for good: a
    file that could not be *read* is retried when the cache is next opened
    (:data:`READ_ATTEMPTS`). ``intensity``: see :func:`normalize_intensity`.
    """
    if intensity not in INTENSITY_CHOICES:
        raise ValueError(f"intensity must be one of {INTENSITY_CHOICES}, got {intensity!r}")
    if size <= 0:
        raise ValueError(f"size must be positive, got {size}")
    path_list = [str(p) for p in paths]
    if len(set(path_list)) != len(path_list):
        raise ValueError("build_cache: paths contain duplicates")
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    fingerprint = cache_fingerprint(path_list, size, intensity)
    mode = "" if intensity == "none" else f"-{intensity}"
    stem = f"gray{size}{mode}-{len(path_list)}-{fingerprint[:16]}"
    npy_path = cache_dir / f"{stem}.npy"
    index_path = cache_dir / f"{stem}.json"

    cache = _open_existing(npy_path, index_path, fingerprint, len(path_list), size)
    if cache is not None:
        cache = _retry_unread(cache, index_path, intensity)
    else:
        removed = remove_interrupted_builds(cache_dir)
        if removed:
            print(f"removed {len(removed)} temporary file(s) of interrupted cache builds")
        cache = _build(
            path_list, size, npy_path, index_path, fingerprint, progress, workers, intensity
        )
    if cache.failed:
        unread = sum(not f.get("permanent", False) for f in cache.failed)
        again = f"; {unread} could not be read and will be tried again" if unread else ""
        warnings.warn(
            f"{len(cache.failed)} of {len(cache)} images could not be decoded (zero rows, "
            f"ok=False; reasons in {cache.index_path}){again}",
            stacklevel=2,
        )
    return cache


def _build(
    paths: list[str],
    size: int,
    npy_path: Path,
    index_path: Path,
    fingerprint: str,
    progress: bool,
    workers: int,
    intensity: str,
) -> ImageCache:
    """Decode ``paths`` into a new cache (see :func:`build_cache`); one pass, bounded memory."""
    from tqdm.auto import tqdm

    n = len(paths)
    tmp = temp_name(npy_path)
    array = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(n, size, size))
    ok = np.zeros(n, dtype=np.bool_)
    failed: list[dict[str, str]] = []
    window = 256  # images in flight at once: bounds memory whatever the dataset size
    try:
        with (
            ThreadPoolExecutor(max_workers=max(1, workers)) as pool,
            tqdm(
                total=n, desc=f"caching images at {size}px", unit="img", disable=not progress
            ) as bar,
        ):
            for start in range(0, n, window):
                chunk = paths[start : start + window]
                for offset, result in enumerate(
                    pool.map(
                        _decode_with_retries, chunk, [size] * len(chunk), [intensity] * len(chunk)
                    )
                ):
                    row = start + offset
                    if isinstance(result, dict):
                        array[row] = 0
                        failed.append({"path": paths[row], **result})
                    else:
                        array[row] = result
                        ok[row] = True
                    bar.update(1)
        array.flush()
        del array
        os.replace(tmp, npy_path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    index = {
        "format_version": CACHE_FORMAT_VERSION,
        "fingerprint": fingerprint,
        "size": size,
        "intensity": intensity,
        "decoder": f"pillow-{Image.__version__} draft>={DRAFT_FACTOR}x bicubic",
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "paths": paths,
        "ok": ok.tolist(),
        "failed": failed,
    }
    atomic_write_text(index_path, json.dumps(index, indent=1))  # last: now the cache is valid
    return ImageCache(npy_path, index)
