"""Benchmarks behind the numbers the tutorial quotes (``python -m helpers bench ...``).

``bench_loader`` answers "is the decode-once cache worth it?": on the same images, in one
run, how many images per second reach the model as normalised ``(B, 3, S, S)`` float
tensors with a plain per-image pipeline versus the cache, plus what each JPEG decoder costs.
Every rate is the median of several repetitions; augmentation is left out of both sides.
"""

from __future__ import annotations

import statistics
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from helpers.config import IMAGENET_MEAN, IMAGENET_STD
from helpers.preprocess import DECODE_WORKERS, BatchLoader, build_cache, load_gray

BATCH_SIZE = 64


def find_images(data_dir: str | Path) -> tuple[list[str], list[int]]:
    """Image paths and targets under ``data_dir``: via :func:`helpers.data.scan` when it is
    available (problem files are reported by the scan), else ``*/*/*.jp*g`` two folders down
    (class folder name NORMAL = 0, anything else = 1)."""
    try:
        from helpers.data import scan
    except ImportError:
        scan = None
    if scan is not None:
        result = scan(data_dir)
        if len(result.problems):
            print(
                f"scan: {len(result.problems)} unusable files skipped (see `python -m helpers scan`)"
            )
        return result.images["path"].tolist(), result.images["target"].astype(int).tolist()
    files = sorted(Path(data_dir).glob("*/*/*.jp*g"))
    return [str(p) for p in files], [0 if p.parent.name.upper() == "NORMAL" else 1 for p in files]


class NaiveDataset(torch.utils.data.Dataset):
    """Our own naive baseline (not the original notebook's code): every access opens the
    full-resolution file with PIL, converts it to grey, resizes it bicubic, and turns it into
    a normalised 3-channel tensor, the way an ``ImageFolder`` pipeline works."""

    def __init__(self, paths: list[str], targets: list[int], size: int) -> None:
        self.paths, self.targets, self.size = paths, targets, size
        self.mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
        self.std = torch.tensor(IMAGENET_STD).view(3, 1, 1)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        with Image.open(self.paths[i]) as image:
            gray = image.convert("L").resize((self.size, self.size), Image.Resampling.BICUBIC)
        x = torch.from_numpy(np.array(gray, dtype=np.float32) / 255.0)[None]  # ToTensor
        return (x.expand(3, -1, -1) - self.mean) / self.std, self.targets[i]


def _median_rate(n_images: int, run: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    """Median images/second of ``repeats`` calls of ``run`` (and the last call's result)."""
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = run()
        times.append(time.perf_counter() - start)
    return n_images / statistics.median(times), result


def _consume(batches) -> int:
    """Iterate over a loader, touching every batch; the number of images seen."""
    seen = 0
    for x, _ in batches:
        seen += x.shape[0]
    return seen


def _torchvision_decoder(size: int) -> Callable[[str], np.ndarray]:
    """``torchvision.io.decode_jpeg`` (grey) + antialiased bicubic resize on the uint8 tensor."""
    from torchvision.io import ImageReadMode, decode_jpeg, read_file
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms.v2 import functional as TF  # uint8 kernel, matches PIL

    def decode(path: str) -> np.ndarray:
        gray = decode_jpeg(read_file(path), mode=ImageReadMode.GRAY)
        resized = TF.resize(gray, [size, size], InterpolationMode.BICUBIC, antialias=True)
        return resized[0].numpy()

    return decode


def compare_decoders(paths: list[str], size: int, repeats: int) -> dict[str, dict[str, float]]:
    """Images/s (one thread, one image at a time) and mean absolute difference in grey levels
    against a full PIL decode, for PIL full, PIL draft and torchvision ``decode_jpeg``."""
    jpegs = [p for p in paths if Path(p).suffix.lower() in (".jpg", ".jpeg")]
    decoders = {
        "pil_full": lambda p: load_gray(p, size, draft=False),
        "pil_draft": lambda p: load_gray(p, size),
        "torchvision": _torchvision_decoder(size),
    }
    if not jpegs:
        return {}
    reference = [load_gray(p, size, draft=False) for p in jpegs]  # also warms the file cache
    results: dict[str, dict[str, float]] = {}
    for name, decode in decoders.items():
        try:
            with warnings.catch_warnings():  # torchvision 0.29 deprecates its image decoders
                warnings.simplefilter("ignore", DeprecationWarning)
                rate, images = _median_rate(
                    len(jpegs), lambda d=decode: [d(p) for p in jpegs], repeats
                )
        except (RuntimeError, ValueError) as err:  # e.g. a JPEG flavour a decoder lacks
            print(f"decoder {name} failed: {err}")
            continue
        diffs = [
            np.abs(a.astype(np.float32) - b).mean() for a, b in zip(images, reference, strict=True)
        ]
        results[name] = {
            "images_per_s": rate,
            "mean_abs_diff": float(np.mean(diffs)),
            "worst_image_diff": float(np.max(diffs)),
        }
    return results


def _bench_cache(
    paths: list[str], targets: list[int], size: int, repeats: int, epoch_repeats: int
) -> tuple[float, float, float]:
    """(build images/s, epoch images/s, megabytes) of the cache in a temporary folder.

    Each build starts from an empty folder; epochs are timed on the already-built cache.
    """
    with tempfile.TemporaryDirectory(prefix="bench-cache-", ignore_cleanup_errors=True) as tmp:
        build_rate, cache = _median_rate(
            len(paths),
            lambda: build_cache(paths, size, Path(tempfile.mkdtemp(dir=tmp)), progress=False),
            repeats,
        )
        rows = np.flatnonzero(cache.ok)
        loader = BatchLoader(
            cache, rows, [targets[i] for i in rows], BATCH_SIZE, shuffle=True, augment=False, seed=0
        )
        _consume(loader)  # warm-up epoch
        epoch_rate, _ = _median_rate(len(rows), lambda: _consume(loader), epoch_repeats)
        return build_rate, epoch_rate, cache.array.nbytes / 1e6


def bench_loader(
    data_dir: str | Path,
    size: int = 256,
    quick: bool = False,
    *,
    max_images: int | None = None,
    threads: int = 1,
) -> dict[str, Any]:
    """Measure the naive per-image pipeline against the cache on the same images; print and
    return the rates (images/s, medians), their ratio, the cache build rate and the decoder
    comparison. ``quick`` uses at most 48 images and fewer repetitions (well under a minute).

    Both pipelines run with ``threads`` torch threads (1 by default: on a shared two-core
    machine a second intra-op thread made tensor ops several times slower through
    contention); the cache build uses ``DECODE_WORKERS`` decoding threads, as it does in use.
    """
    paths, targets = find_images(data_dir)
    if not paths:
        raise FileNotFoundError(f"{data_dir}: no images found")
    limit = 48 if quick else max_images
    if limit is not None and limit < len(paths):  # spread over the folders (both classes)
        keep = np.linspace(0, len(paths) - 1, limit).round().astype(int)
        paths, targets = [paths[i] for i in keep], [targets[i] for i in keep]
    n = len(paths)
    repeats = 1 if quick else 3
    epoch_repeats = 3 if quick else 7
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        print(
            f"loader benchmark: {n} images from {data_dir} at {size}x{size}, batch {BATCH_SIZE}, "
            f"torch threads {threads}, medians of {repeats} (epochs of the cache: {epoch_repeats})"
        )
        decoders = compare_decoders(paths, size, repeats)

        build_rate, cache_rate, cache_mb = _bench_cache(
            paths, targets, size, repeats, epoch_repeats
        )
        naive = torch.utils.data.DataLoader(
            NaiveDataset(paths, targets, size), batch_size=BATCH_SIZE, num_workers=0
        )
        naive_rate, _ = _median_rate(n, lambda: _consume(naive), repeats)
    finally:
        torch.set_num_threads(previous_threads)

    result = {
        "images": n,
        "size": size,
        "threads": threads,
        "naive_images_per_s": naive_rate,
        "cache_images_per_s": cache_rate,
        "speedup": cache_rate / naive_rate,
        "cache_build_images_per_s": build_rate,
        "cache_megabytes": cache_mb,
        "decoders": decoders,
    }
    _print_report(result)
    return result


def _print_report(r: dict[str, Any]) -> None:
    """The human-readable summary of :func:`bench_loader`."""
    labels = {
        "pil_full": "PIL full decode + bicubic",
        "pil_draft": "PIL draft (>=2x) + bicubic",
        "torchvision": "torchvision decode_jpeg + bicubic",
    }
    if not r["decoders"]:
        print("decoders: no JPEG files, comparison skipped")
    else:
        print("decoders (1 thread, -> uint8 grey, mean |diff| vs PIL full in grey levels):")
    for name, d in r["decoders"].items():
        print(
            f"  {labels[name]:34s} {d['images_per_s']:8.1f} img/s   "
            f"mean |diff| {d['mean_abs_diff']:.3f} (worst image {d['worst_image_diff']:.3f})"
        )
    print(
        f"cache build ({DECODE_WORKERS} decode threads): {r['cache_build_images_per_s']:.1f} img/s "
        f"({r['cache_megabytes']:.1f} MB)"
    )
    print("one epoch to normalised float (B, 3, S, S), no augmentation:")
    print(
        f"  naive Dataset + DataLoader (decode every access) {r['naive_images_per_s']:10.1f} img/s"
    )
    print(
        f"  cache + BatchLoader                              {r['cache_images_per_s']:10.1f} img/s"
    )
    print(f"  speed-up: {r['speedup']:.1f}x (target >= 20x)")
