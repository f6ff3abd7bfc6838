"""The bootstrap's AUROC per resample: scikit-learn's ``roc_auc_score`` against the rank
(Mann-Whitney) form that :func:`helpers.metrics.bootstrap_ci` uses, side by side.

``python -m benchmarks.bootstrap_auc`` draws 624 scores (the official test split's size) and
times 1,000 resamples of each, in alternating rounds, checking that both give the same AUROC.
"""

from __future__ import annotations

import statistics
import time

import numpy as np
from sklearn.metrics import roc_auc_score

from helpers.metrics import _rank_auc


def bench_bootstrap_auc(n_images: int = 624, n_resamples: int = 1000, repeats: int = 3) -> float:
    """Median ratio (scikit-learn time / rank time) over ``repeats`` alternating rounds."""
    rng = np.random.default_rng(0)
    y = (rng.random(n_images) < 390 / 624).astype(int)
    p = np.clip(0.35 * y + 0.65 * rng.random(n_images), 0, 1).round(3)  # ties, as real scores
    draws = [rng.integers(0, n_images, n_images) for _ in range(n_resamples)]
    ratios = []
    for round_ in range(repeats):
        start = time.perf_counter()
        slow = [roc_auc_score(y[i], p[i]) for i in draws]
        sklearn_s = time.perf_counter() - start
        start = time.perf_counter()
        fast = [_rank_auc(y[i], p[i]) for i in draws]
        rank_s = time.perf_counter() - start
        assert np.allclose(slow, fast, rtol=0, atol=1e-12)
        ratios.append(sklearn_s / rank_s)
        print(
            f"round {round_ + 1}: roc_auc_score {sklearn_s:.2f} s, rank AUROC {rank_s:.3f} s "
            f"for {n_resamples} resamples: {ratios[-1]:.0f}x"
        )
    print(f"median {statistics.median(ratios):.0f}x; largest difference in AUROC: below 1e-12")
    return statistics.median(ratios)


if __name__ == "__main__":
    bench_bootstrap_auc()
