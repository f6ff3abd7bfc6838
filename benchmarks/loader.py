"""``bench loader``: is the decode-once cache worth it?

On the same images, in one run, how many images per second reach the model as normalised
``(B, 3, S, S)`` float tensors with a plain per-image pipeline versus the cache, plus what
each JPEG decoder costs. Every rate is the median of several repetitions; augmentation is
left out of both sides, so that only the data path is compared.
"""

from __future__ import annotations

import statistics
import tempfile
import time
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from benchmarks.common import BATCH_SIZE, find_images, pick_images
from helpers.cache import DECODE_WORKERS, build_cache
from helpers.config import IMAGENET_MEAN, IMAGENET_STD
from helpers.images import load_gray
from helpers.loader import BatchLoader

QUICK_IMAGES = 48
"""``--quick``: at most this many images."""

DECODER_LABELS = {
    "pil_full": "PIL full decode + bicubic",
    "pil_draft": "PIL draft (>=2x) + bicubic",
    "torchvision": "torchvision decode_jpeg + bicubic",
}
"""The decoders :func:`compare_decoders` times, as the report names them."""


class NaiveDataset(torch.utils.data.Dataset):
    """Our own naive baseline (not the original notebook's code), the way an ``ImageFolder``
    pipeline works: every access opens the full-resolution file with PIL, converts it to
    grey, resizes it bicubic and turns it into a normalised 3-channel tensor."""

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


def median_rate(n_images: int, run: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    """Median images/second of ``repeats`` calls of ``run``, and the last call's result.

    The median, not the mean: on a shared machine one slow repetition should not count.
    """
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = run()
        times.append(time.perf_counter() - start)
    return n_images / statistics.median(times), result


def consume(batches: Iterable[tuple[torch.Tensor, Any]]) -> int:
    """Iterate over a loader, touching every batch; the number of images seen."""
    seen = 0
    for x, _ in batches:
        seen += x.shape[0]
    return seen


def torchvision_decoder(size: int) -> Callable[[str], np.ndarray]:
    """``torchvision.io.decode_jpeg`` (grey) + antialiased bicubic resize on the uint8 tensor:
    the alternative to PIL that the cache could have used."""
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
    against a full PIL decode, for PIL full, PIL draft and torchvision ``decode_jpeg``.

    Answers whether the cache's draft decode is fast enough and close enough. Only JPEGs are
    compared (draft mode and ``decode_jpeg`` are JPEG-only); no JPEG, no comparison.
    """
    jpegs = [p for p in paths if Path(p).suffix.lower() in (".jpg", ".jpeg")]
    if not jpegs:
        return {}
    decoders = {
        "pil_full": lambda p: load_gray(p, size, draft=False),
        "pil_draft": lambda p: load_gray(p, size),
        "torchvision": torchvision_decoder(size),
    }
    reference = [load_gray(p, size, draft=False) for p in jpegs]  # also warms the file cache
    results: dict[str, dict[str, float]] = {}
    for name, decode in decoders.items():
        try:
            with warnings.catch_warnings():  # torchvision 0.29 deprecates its image decoders
                warnings.simplefilter("ignore", DeprecationWarning)
                rate, images = median_rate(
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


def time_cache(
    paths: list[str], targets: list[int], size: int, repeats: int, epoch_repeats: int
) -> tuple[dict[int, float], float, float]:
    """({decode threads: build images/s}, epoch images/s, megabytes) of the cache in a
    temporary folder.

    Each build starts from an empty folder. Builds with one decoding thread and with
    ``DECODE_WORKERS`` alternate, repetition by repetition, so that both see the same machine
    load; epochs are timed on the built cache, after one untimed warm-up epoch.
    """
    worker_counts = sorted({1, DECODE_WORKERS})
    times: dict[int, list[float]] = {workers: [] for workers in worker_counts}
    with tempfile.TemporaryDirectory(prefix="bench-cache-", ignore_cleanup_errors=True) as tmp:
        for _ in range(repeats):
            for workers in worker_counts:
                folder = Path(tempfile.mkdtemp(dir=tmp))
                start = time.perf_counter()
                cache = build_cache(paths, size, folder, progress=False, workers=workers)
                times[workers].append(time.perf_counter() - start)
        build_rates = {w: len(paths) / statistics.median(t) for w, t in times.items()}
        rows = np.flatnonzero(cache.ok)
        loader = BatchLoader(
            cache, rows, [targets[i] for i in rows], BATCH_SIZE, shuffle=True, augment=False, seed=0
        )
        consume(loader)  # warm-up epoch
        epoch_rate, _ = median_rate(len(rows), lambda: consume(loader), epoch_repeats)
        return build_rates, epoch_rate, cache.array.nbytes / 1e6


def time_naive(paths: list[str], targets: list[int], size: int, repeats: int) -> float:
    """Images/s of one epoch of :class:`NaiveDataset` in a default ``DataLoader``."""
    naive = torch.utils.data.DataLoader(
        NaiveDataset(paths, targets, size), batch_size=BATCH_SIZE, num_workers=0
    )
    rate, _ = median_rate(len(paths), lambda: consume(naive), repeats)
    return rate


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
    comparison. ``quick`` uses at most :data:`QUICK_IMAGES` images and fewer repetitions.

    Both pipelines run with ``threads`` torch threads (1 by default, so that the figures do
    not depend on what else runs on the machine; ``benchmarks/README.md`` shows why); the
    cache build uses ``DECODE_WORKERS`` decoding threads, as it does in use.
    """
    paths, targets = find_images(data_dir)
    if not paths:
        raise FileNotFoundError(f"{data_dir}: no images found")
    paths, targets = pick_images(paths, targets, QUICK_IMAGES if quick else max_images)
    repeats, epoch_repeats = (1, 3) if quick else (3, 7)
    print(
        f"loader benchmark: {len(paths)} images from {data_dir} at {size}x{size}, "
        f"batch {BATCH_SIZE}, torch threads {threads}, medians of {repeats} "
        f"(epochs of the cache: {epoch_repeats})"
    )
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        decoders = compare_decoders(paths, size, repeats)
        build_rates, cache_rate, cache_mb = time_cache(paths, targets, size, repeats, epoch_repeats)
        naive_rate = time_naive(paths, targets, size, repeats)
    finally:
        torch.set_num_threads(previous_threads)
    result = {
        "images": len(paths),
        "size": size,
        "threads": threads,
        "naive_images_per_s": naive_rate,
        "cache_images_per_s": cache_rate,
        "speedup": cache_rate / naive_rate,
        "cache_build_images_per_s": build_rates[DECODE_WORKERS],
        "cache_build_1_thread_images_per_s": build_rates[1],
        "cache_megabytes": cache_mb,
        "decoders": decoders,
    }
    print_loader_report(result)
    return result


def print_loader_report(r: dict[str, Any]) -> None:
    """The human-readable summary of :func:`bench_loader`."""
    if not r["decoders"]:
        print("decoders: no JPEG files, comparison skipped")
    else:
        print("decoders (1 thread, -> uint8 grey, mean |diff| vs PIL full in grey levels):")
    for name, d in r["decoders"].items():
        print(
            f"  {DECODER_LABELS[name]:34s} {d['images_per_s']:8.1f} img/s   "
            f"mean |diff| {d['mean_abs_diff']:.3f} (worst image {d['worst_image_diff']:.3f})"
        )
    build, build_1 = r["cache_build_images_per_s"], r["cache_build_1_thread_images_per_s"]
    print(
        f"cache build ({DECODE_WORKERS} decode threads): {build:.1f} img/s "
        f"({r['cache_megabytes']:.1f} MB); 1 decode thread: {build_1:.1f} img/s, "
        f"{DECODE_WORKERS} threads {build / build_1:.2f}x"
    )
    print("one epoch to normalised float (B, 3, S, S), no augmentation:")
    print(
        f"  naive Dataset + DataLoader (decode every access) {r['naive_images_per_s']:10.1f} img/s"
    )
    print(
        f"  cache + BatchLoader                              {r['cache_images_per_s']:10.1f} img/s"
    )
    print(f"  speed-up: {r['speedup']:.1f}x (target >= 20x)")
