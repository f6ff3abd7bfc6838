"""What a run's data manifest costs: hashing every image of a dataset, beside scanning it.

``python -m benchmarks.manifest --data ../shared/data/kermany-224`` scans the dataset (headers
only) and hashes every file (SHA-256 of its bytes, :func:`helpers.manifest.file_digest`), in
alternating rounds so that a busy machine slows both alike, and prints each round and the
medians. Every new run pays one hash of its images (``train`` writes the manifest); an
evaluation or a resume hashes the images it reads.
"""

from __future__ import annotations

import argparse
import statistics
import time

from helpers.data import scan
from helpers.manifest import file_digest


def bench_manifest(data: str, repeats: int = 3) -> dict[str, float]:
    """Median seconds of a header scan and of hashing every scanned file, over ``repeats``
    alternating rounds."""
    paths = scan(data).images["path"].tolist()
    total_mb = sum(file_digest(p)[0] for p in paths) / 1e6  # also warms the page cache
    scans, hashes = [], []
    for round_ in range(repeats):
        start = time.perf_counter()
        scan(data)
        scans.append(time.perf_counter() - start)
        start = time.perf_counter()
        for path in paths:
            file_digest(path)
        hashes.append(time.perf_counter() - start)
        print(f"round {round_ + 1}: scan {scans[-1]:.2f} s, hash {hashes[-1]:.2f} s")
    result = {"scan_s": statistics.median(scans), "hash_s": statistics.median(hashes)}
    print(
        f"{len(paths):,} images, {total_mb:.1f} MB: scan {result['scan_s']:.2f} s, SHA-256 of "
        f"every file {result['hash_s']:.2f} s ({total_mb / result['hash_s']:.0f} MB/s; "
        f"{result['hash_s'] / result['scan_s']:.2f}x the scan)"
    )
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", required=True, help="dataset folder")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    bench_manifest(args.data, args.repeats)
