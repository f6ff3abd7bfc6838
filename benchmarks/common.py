"""What both benchmarks share: the batch size and the images they measure on."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from helpers.data import scan

BATCH_SIZE = 64


def find_images(data_dir: str | Path) -> tuple[list[str], list[int]]:
    """Image paths and targets under ``data_dir``, found by :func:`helpers.data.scan`.

    Files the scan cannot use are counted on one line rather than failing the benchmark.
    """
    result = scan(data_dir)
    if len(result.problems):
        print(f"scan: {len(result.problems)} unusable files skipped (see `python -m helpers scan`)")
    return result.images["path"].tolist(), result.images["target"].astype(int).tolist()


def pick_images(
    paths: list[str], targets: list[int], limit: int | None
) -> tuple[list[str], list[int]]:
    """At most ``limit`` of the images, evenly spread over the sorted list.

    The scan lists images class by class, so an even spread keeps both classes.
    """
    if limit is None or limit >= len(paths):
        return paths, targets
    keep = np.linspace(0, len(paths) - 1, limit).round().astype(int)
    return [paths[i] for i in keep], [targets[i] for i in keep]
