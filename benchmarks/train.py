"""``bench train``: how much faster does this project train than the original's structure?

Training images per second of a naive epoch (full-resolution decode and per-image
torchvision augmentation in a ``DataLoader``, a plain model with autograd everywhere)
against the engine's (cache, batch augmentation, ``channels_last``, the frozen prefix
BatchNorm-folded and run without autograd), each in its own process for its peak memory,
timed in alternating rounds (:func:`benchmarks.worker.run_interleaved`). What each side does
is :mod:`benchmarks.variants`.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.common import BATCH_SIZE, find_images, pick_images
from benchmarks.variants import TRAIN_COMPARISONS, TRAIN_PRETRAINED_CHOICES
from benchmarks.worker import run_interleaved
from helpers.cache import DECODE_WORKERS, build_cache
from helpers.config import CLASSES
from helpers.recipe import pick_device

QUICK_IMAGES = 64
"""``--quick``: at most this many images (and 2 rounds)."""


def bench_train(
    data_dir: str | Path,
    image_size: int = 256,
    pretrained: str = "frozen-random",
    quick: bool = False,
    *,
    threads: int = 1,
    compare: Sequence[str] = (),
    max_images: int | None = None,
    repeats: int | None = None,
    seed: int = 0,
    device: str | None = None,
) -> dict[str, Any]:
    """Training images/second of the original's structure ("naive") against this project's
    engine, on the same images, in one run; print and return the figures.

    The cache is built first and timed separately: it is not part of the epochs. Each
    variant runs in its own process with ``threads`` torch threads (its peak resident memory
    is its own; what importing torch alone takes is reported as ``import_rss_mb``); epochs
    alternate between the variants and ``speedup`` is the median of the per-round ratios,
    robust to a machine shared with other work. ``engine_data_fraction`` is the share of the
    engine's epoch spent waiting for batches. ``compare`` adds variants from
    :data:`benchmarks.variants.TRAIN_COMPARISONS` to the same rounds. ``quick``: at most
    :data:`QUICK_IMAGES` images and 2 rounds. ``device``: as
    :func:`helpers.train.pick_device`; on CUDA the engine also uses mixed precision, as
    training does, and ``*_peak_gpu_mb`` are filled in.
    """
    check_train_settings(image_size, pretrained, threads, compare)
    dev = pick_device(device)
    paths, targets = find_images(data_dir)
    if not paths:
        raise FileNotFoundError(f"{data_dir}: no images found")
    paths, targets = pick_images(paths, targets, QUICK_IMAGES if quick else max_images)
    repeats = repeats or (2 if quick else 5)
    with tempfile.TemporaryDirectory(prefix="bench-train-", ignore_cleanup_errors=True) as tmp:
        paths, targets, build_s = cache_decodable(paths, targets, image_size, Path(tmp))
        if len(set(targets)) < len(CLASSES):
            raise FileNotFoundError(f"{data_dir}: images of both classes are needed")
        print(
            f"train benchmark: {len(paths)} images from {data_dir} at {image_size}x{image_size}, "
            f"model {pretrained}, batch {BATCH_SIZE}, device {dev}, torch threads {threads}, "
            f"{repeats} interleaved rounds, each variant in its own process"
        )
        common = {
            "paths": paths, "targets": targets, "size": image_size, "seed": seed,
            "pretrained": pretrained, "cache_dir": tmp, "threads": threads, "device": str(dev),
        }  # fmt: skip
        runs = run_interleaved(train_variants(compare), common, repeats)
    settings = {
        "images": len(paths), "image_size": image_size, "pretrained": pretrained,
        "device": str(dev), "threads": threads, "batch_size": BATCH_SIZE, "repeats": repeats,
    }  # fmt: skip
    result = summarise_train(runs, compare, settings, build_s)
    print_train_report(result)
    return result


def check_train_settings(
    image_size: int, pretrained: str, threads: int, compare: Sequence[str]
) -> None:
    """Refuse bad settings before anything is decoded or started (ValueError).

    With ``pretrained="imagenet"`` the weights are loaded once here, so that their absence
    fails with the model's clear message rather than inside a worker process.
    """
    if pretrained not in TRAIN_PRETRAINED_CHOICES:
        raise ValueError(
            f"pretrained must be one of {TRAIN_PRETRAINED_CHOICES}, got {pretrained!r}"
        )
    if image_size <= 0 or image_size % 32:
        raise ValueError(f"image size {image_size}: must be a positive multiple of 32")
    unknown = [c for c in compare if c not in TRAIN_COMPARISONS]
    if unknown:
        raise ValueError(f"unknown comparison {unknown}; choose from {list(TRAIN_COMPARISONS)}")
    if threads < 1:
        raise ValueError(f"threads must be at least 1, got {threads}")
    if pretrained == "imagenet":
        from helpers.model import load_imagenet_state_dict

        load_imagenet_state_dict()


def cache_decodable(
    paths: list[str], targets: list[int], image_size: int, cache_dir: Path
) -> tuple[list[str], list[int], float]:
    """Build the engine's cache in ``cache_dir``; the images that decoded, and the seconds
    the build took.

    Images that fail to decode are named and left out of both sides, so that both train on
    exactly the same images.
    """
    start = time.perf_counter()
    cache = build_cache(paths, image_size, cache_dir, progress=False)
    build_s = time.perf_counter() - start
    ok = [i for i, p in enumerate(paths) if cache.ok[cache.index_of(p)]]
    if len(ok) < len(paths):
        print(f"{len(paths) - len(ok)} images failed to decode and are left out of both sides:")
        for failure in cache.failed:
            print(f"  {failure['path']}: {failure['reason']}")
    return [paths[i] for i in ok], [targets[i] for i in ok], build_s


def train_variants(compare: Sequence[str]) -> dict[str, dict[str, Any]]:
    """The specs of the variants to time: naive, engine, then each of ``compare``."""
    variants: dict[str, dict[str, Any]] = {"naive": {"kind": "naive"}, "engine": {"kind": "engine"}}
    for name in compare:
        variants[name] = {"kind": "engine", **TRAIN_COMPARISONS[name][1]}
    return variants


def summarise_run(run: dict[str, Any], n_images: int) -> dict[str, Any]:
    """One variant's figures: median rate and data share over the rounds, and its memory."""
    return {
        "images_per_s": statistics.median(n_images / s for s in run["seconds"]),
        "data_fraction": statistics.median(
            d / s for d, s in zip(run["data_seconds"], run["seconds"], strict=True)
        ),
        "peak_rss_mb": run["peak_rss_mb"],
        "peak_gpu_mb": run["peak_gpu_mb"],
        "import_rss_mb": run["import_rss_mb"],
        "seconds": run["seconds"],
    }


def round_ratios(slower: dict[str, Any], faster: dict[str, Any]) -> list[float]:
    """Per-round speed of ``faster`` relative to ``slower`` (their epoch times' ratio)."""
    return [a / b for a, b in zip(slower["seconds"], faster["seconds"], strict=True)]


def summarise_train(
    runs: dict[str, dict[str, Any]],
    compare: Sequence[str],
    settings: dict[str, Any],
    build_s: float,
) -> dict[str, Any]:
    """:func:`bench_train`'s figures from the workers' timings, with ``settings`` first."""
    n = settings["images"]
    naive, engine = summarise_run(runs["naive"], n), summarise_run(runs["engine"], n)
    pair_speedups = round_ratios(runs["naive"], runs["engine"])
    comparisons = {}
    for name in compare:
        ratios = round_ratios(runs["engine"], runs[name])
        comparisons[name] = {
            **summarise_run(runs[name], n),
            "pair_ratios": ratios,
            "ratio": statistics.median(ratios),
        }
    return {
        **settings,
        "naive_images_per_s": naive["images_per_s"],
        "engine_images_per_s": engine["images_per_s"],
        "speedup": statistics.median(pair_speedups),
        "pair_speedups": pair_speedups,
        "naive_data_fraction": naive["data_fraction"],
        "engine_data_fraction": engine["data_fraction"],
        "naive_peak_rss_mb": naive["peak_rss_mb"],
        "engine_peak_rss_mb": engine["peak_rss_mb"],
        "naive_peak_gpu_mb": naive["peak_gpu_mb"],
        "engine_peak_gpu_mb": engine["peak_gpu_mb"],
        "import_rss_mb": engine["import_rss_mb"],
        "cache_build_seconds": build_s,
        "cache_build_images_per_s": n / build_s,
        "cache_megabytes": n * settings["image_size"] ** 2 / 1e6,
        "compare": comparisons,
    }


def print_train_report(r: dict[str, Any]) -> None:
    """The human-readable summary of :func:`bench_train`."""
    pairs = ", ".join(f"{x:.2f}" for x in r["pair_speedups"])
    print(
        f"cache build, once ({DECODE_WORKERS} decode threads): {r['cache_build_seconds']:.1f} s "
        f"({r['cache_build_images_per_s']:.0f} img/s, {r['cache_megabytes']:.1f} MB); "
        "not part of the epochs below"
    )
    print("training epochs (images/s, median of rounds; peak resident memory of its process):")
    print(
        f"  naive  (decode + per-image augmentation, DataLoader) {r['naive_images_per_s']:7.1f} img/s"
        f"   peak {r['naive_peak_rss_mb']:6.0f} MB   data {r['naive_data_fraction']:.0%} of the epoch"
    )
    print(
        f"  engine (cache + batch augmentation, BatchLoader)     {r['engine_images_per_s']:7.1f} img/s"
        f"   peak {r['engine_peak_rss_mb']:6.0f} MB   data {r['engine_data_fraction']:.0%} of the epoch"
    )
    print(
        f"  (each peak includes {r['import_rss_mb']:.0f} MB for Python + torch + torchvision alone)"
    )
    if r["engine_peak_gpu_mb"] is not None:
        print(
            f"  peak GPU memory allocated: naive {r['naive_peak_gpu_mb']:.0f} MB, "
            f"engine {r['engine_peak_gpu_mb']:.0f} MB"
        )
    print(f"speed-up: {r['speedup']:.2f}x (median of per-round ratios: {pairs}; target >= 3x)")
    print(
        f"engine time split: {1 - r['engine_data_fraction']:.0%} model forward/backward/optimizer, "
        f"{r['engine_data_fraction']:.0%} waiting for batches (target <= 15%)"
    )
    for name, c in r["compare"].items():
        ratios = ", ".join(f"{x:.2f}" for x in c["pair_ratios"])
        print(
            f"  {TRAIN_COMPARISONS[name][0]:44s} {c['images_per_s']:7.1f} img/s   "
            f"{c['ratio']:.2f}x the engine (per round: {ratios})   peak {c['peak_rss_mb']:.0f} MB"
        )
