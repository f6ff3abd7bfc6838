"""Is a plain ``DataLoader`` over the decode-once cache as fast as ``BatchLoader``?

``python -m benchmarks.dataloader --data DATA`` answers the question of issue 22 (replace the
package's ``BatchLoader`` by what notebook 02 teaches, if that is as fast on 2 cores). On the
same cached training images, in one process, it times one epoch of augmented, normalised
``(B, 3, S, S)`` float batches from each of:

* ``batchloader``: :class:`helpers.loader.BatchLoader`, the package's loader (each batch's rows
  gathered from the cache in ascending order by one ``numpy.take``, then augmented as a whole
  batch with tensor operations);
* ``dataloader``: a map-style ``Dataset`` whose items are the cache's uint8 rows, a
  ``torch.utils.data.DataLoader`` (shuffled by a seeded generator, default collate), then the
  same whole-batch augmentation and normalisation on each batch;
* ``per-image`` (``--policy article`` only): notebook 02's ``Dataset``, whose ``__getitem__``
  augments each image with torchvision's per-image transforms (the article's ``RandomChoice``);
* ``dataloader-N-workers`` (``--workers N``): ``dataloader`` with ``N`` worker processes
  (kept alive between epochs).

The variants alternate epoch by epoch in interleaved rounds, after one untimed warm-up epoch
each, so that a slow patch of a shared machine hits every variant of a round. It prints each
variant's median images/s and the median of its per-round ratios to ``batchloader``. Every
timed epoch is also checked: batches of the right shape, each training image exactly once,
except the one image ``batchloader`` leaves out of an epoch when the count would end it with a
batch of one (:func:`leaves_out_one`).
Measurements are recorded in ``benchmarks/README.md``.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torchvision.transforms import functional as TF

from benchmarks.common import BATCH_SIZE, find_images, pick_images
from helpers.augment import article_augmentation, augment_policy, normalize_batch
from helpers.cache import ImageCache, build_cache
from helpers.config import IMAGENET_MEAN, IMAGENET_STD
from helpers.loader import BatchLoader

QUICK_IMAGES = 64
"""``--quick``: at most this many images (and 2 rounds)."""


class CachedImages(torch.utils.data.Dataset):
    """Cache rows as ``(uint8 (1, S, S) tensor, target)``: augmentation happens afterwards, on
    whole batches."""

    def __init__(self, array: np.ndarray, rows: np.ndarray, targets: list[int]) -> None:
        self.array, self.rows, self.targets = array, rows, targets

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return torch.from_numpy(np.array(self.array[self.rows[i]]))[None], self.targets[i]


class AugmentedImages(CachedImages):
    """Notebook 02's ``Dataset``: each item augmented on its own (torchvision, per image) and
    normalised to three ImageNet channels."""

    def __init__(self, array: np.ndarray, rows: np.ndarray, targets: list[int]) -> None:
        super().__init__(array, rows, targets)
        self.augment = article_augmentation()

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        image, target = super().__getitem__(i)
        x = self.augment(image.float() / 255)
        return TF.normalize(x.expand(3, -1, -1), IMAGENET_MEAN, IMAGENET_STD), target


def batch_augmented(
    loader: torch.utils.data.DataLoader, policy: str, seed: int
) -> Callable[[], Iterable[tuple[torch.Tensor, torch.Tensor]]]:
    """One epoch of ``loader``'s uint8 batches, each augmented and normalised as a whole, as
    :class:`BatchLoader` does (one generator for the augmentation, seeded once)."""
    generator = torch.Generator().manual_seed(seed)

    def epoch() -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
        for x, y in loader:
            yield normalize_batch(augment_policy(x.float().div_(255), generator, policy)), y

    return epoch


def make_variants(
    cache: ImageCache, rows: np.ndarray, targets: list[int], policy: str, workers: int, seed: int
) -> dict[str, Callable[[], Iterable[tuple[torch.Tensor, torch.Tensor]]]]:
    """Each variant as a function returning one epoch's batches."""
    package = BatchLoader(
        cache, rows, targets, BATCH_SIZE, shuffle=True, augment=True, policy=policy, seed=seed
    )

    def plain(dataset: torch.utils.data.Dataset, n_workers: int = 0) -> Any:
        return torch.utils.data.DataLoader(
            dataset,
            batch_size=BATCH_SIZE,
            shuffle=True,
            generator=torch.Generator().manual_seed(seed),
            num_workers=n_workers,
            persistent_workers=n_workers > 0,
        )

    variants = {
        "batchloader": lambda: package,
        "dataloader": batch_augmented(
            plain(CachedImages(cache.array, rows, targets)), policy, seed
        ),
    }
    if policy == "article":
        per_image = plain(AugmentedImages(cache.array, rows, targets))
        variants["per-image"] = lambda: per_image
    if workers:
        workers_loader = plain(CachedImages(cache.array, rows, targets), workers)
        variants[f"dataloader-{workers}-workers"] = batch_augmented(workers_loader, policy, seed)
    return variants


def leaves_out_one(name: str, n: int) -> bool:
    """Whether a timed epoch of variant ``name`` over ``n`` images holds one image fewer.

    :class:`BatchLoader`'s shuffled epoch never ends with a batch of one (BatchNorm cannot
    train on it), so when ``n % BATCH_SIZE == 1`` it leaves one image out (another each
    epoch); the ``DataLoader`` variants keep every image. Stated here, not asked of the
    loader, so that a change to the loader's rule fails the benchmark's check.
    """
    return name == "batchloader" and n > 1 and n % BATCH_SIZE == 1


def timed_epoch(
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    targets: list[int],
    size: int,
    *,
    leaves_out_one: bool = False,
) -> float:
    """Seconds for one epoch of ``batches``; checks its float ``(B, 3, size, size)`` batches
    and, by its target counts, that it held each image exactly once, or with
    ``leaves_out_one`` each image at most once and all but one of them."""
    seen: list[int] = []
    start = time.perf_counter()
    for x, y in batches:
        if x.dtype != torch.float32 or tuple(x.shape[1:]) != (3, size, size):
            raise AssertionError(f"batch of {x.dtype} {tuple(x.shape)}")
        seen += y.tolist()
    seconds = time.perf_counter() - start
    expected = len(targets) - 1 if leaves_out_one else len(targets)
    if len(seen) != expected:
        raise AssertionError(f"an epoch gave {len(seen)} images, expected {expected}")
    if Counter(seen) - Counter(targets):  # more images of a class than there are
        raise AssertionError(
            f"an epoch's targets {dict(Counter(seen))} are not among {dict(Counter(targets))}"
        )
    return seconds


def measure(
    variants: dict[str, Callable[[], Iterable[tuple[torch.Tensor, torch.Tensor]]]],
    targets: list[int],
    size: int,
    rounds: int,
) -> dict[str, list[float]]:
    """Each variant's epoch seconds over ``rounds`` interleaved rounds (after one warm-up)."""
    short = {name: leaves_out_one(name, len(targets)) for name in variants}
    for name, epoch in variants.items():
        timed_epoch(epoch(), targets, size, leaves_out_one=short[name])
    seconds: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(rounds):
        for name, epoch in variants.items():
            seconds[name].append(timed_epoch(epoch(), targets, size, leaves_out_one=short[name]))
    return seconds


def bench_dataloader(
    data_dir: str | Path,
    image_size: int = 256,
    *,
    policy: str = "article",
    rounds: int = 5,
    threads: int = 2,
    workers: int = 0,
    max_images: int | None = None,
    quick: bool = False,
    seed: int = 0,
) -> dict[str, Any]:
    """Time the variants on the same cached images; print and return the figures.

    Returns ``images``, ``image_size``, ``policy``, ``threads``, ``rounds`` and, per variant,
    ``images_per_epoch`` (all images, or one fewer: :func:`leaves_out_one`), ``images_per_s``
    (those over the median epoch time), ``seconds`` (each round) and ``ratio`` (median of the
    per-round ratios of its speed to ``batchloader``'s; above 1 is faster).
    """
    paths, targets = find_images(data_dir)
    if not paths:
        raise FileNotFoundError(f"{data_dir}: no images found")
    paths, targets = pick_images(paths, targets, QUICK_IMAGES if quick else max_images)
    rounds = 2 if quick else rounds
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with tempfile.TemporaryDirectory(prefix="bench-dataloader-") as tmp:
            cache = build_cache(paths, image_size, Path(tmp), progress=False)
            rows = np.flatnonzero(cache.ok)
            kept = [targets[i] for i in rows]
            print(
                f"dataloader benchmark: {len(rows)} images from {data_dir} at "
                f"{image_size}x{image_size}, batch {BATCH_SIZE}, policy {policy}, torch threads "
                f"{threads}, {rounds} interleaved rounds after a warm-up epoch each"
            )
            variants = make_variants(cache, rows, kept, policy, workers, seed)
            seconds = measure(variants, kept, image_size, rounds)
    finally:
        torch.set_num_threads(previous)
    result: dict[str, Any] = {
        "images": len(rows), "image_size": image_size, "policy": policy, "threads": threads,
        "rounds": rounds, "variants": {},
    }  # fmt: skip
    for name, values in seconds.items():
        held = len(rows) - leaves_out_one(name, len(rows))
        result["variants"][name] = {
            "images_per_s": held / statistics.median(values),
            "images_per_epoch": held,
            "seconds": values,
        }
    for figures in result["variants"].values():
        figures["ratio"] = statistics.median(round_ratios(result, figures))
    print_report(result)
    return result


def round_ratios(result: dict[str, Any], figures: dict[str, Any]) -> list[float]:
    """A variant's speed (images per second) over ``batchloader``'s, round by round."""
    base = result["variants"]["batchloader"]
    return [
        (figures["images_per_epoch"] / v) / (base["images_per_epoch"] / b)
        for b, v in zip(base["seconds"], figures["seconds"], strict=True)
    ]


def print_report(result: dict[str, Any]) -> None:
    """Each variant's rate and its ratio to ``batchloader``, with the per-round ratios."""
    print("one epoch of augmented, normalised training batches:")
    for name, figures in result["variants"].items():
        rounds = ", ".join(f"{r:.2f}" for r in round_ratios(result, figures))
        print(
            f"  {name:22s} {figures['images_per_s']:9.1f} img/s   "
            f"{figures['ratio']:5.2f}x batchloader's speed (rounds: {rounds})"
        )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="dataset folder")
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--policy", default="article", help="augmentation policy")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument("--workers", type=int, default=0, help="also time N loader workers")
    parser.add_argument("--max-images", type=int, default=None)
    parser.add_argument("--quick", action="store_true", help=f"<= {QUICK_IMAGES} images, 2 rounds")
    args = parser.parse_args(argv)
    bench_dataloader(
        args.data, args.image_size, policy=args.policy, rounds=args.rounds,
        threads=args.threads, workers=args.workers, max_images=args.max_images, quick=args.quick,
    )  # fmt: skip


if __name__ == "__main__":
    main()
