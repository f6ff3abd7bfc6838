"""From a dataset folder to batches: the prepared data of a recipe and the loader over its cache.

:func:`prepare_data` finds, scans and splits the dataset, writes down the split (the data
manifest, :mod:`helpers.manifest`) and opens (or builds) its cache; :func:`load_run_data` does
the same from a run folder's manifest, without finding or splitting anything;
:class:`BatchLoader` reads batches from the cache, augmenting training batches only.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from helpers.augment import augment_policy, normalize_batch
from helpers.cache import ImageCache, build_cache
from helpers.config import AUGMENT_POLICIES, Config, cache_dir
from helpers.data import SPLITS, ScanResult, make_splits, scan
from helpers.manifest import (
    make_manifest,
    manifest_fingerprint,
    read_manifest,
    relocate,
    splits_of,
    verify,
)
from helpers.sources import DatasetLocation, find_dataset


def cache_rows(cache: ImageCache, table: pd.DataFrame) -> tuple[list[int], list[int], list[str]]:
    """Cache rows and targets of ``table``'s images, and the paths that failed to decode.

    Images that failed are left out of the rows (a loader refuses them) and returned, so
    that the caller can report how many were skipped instead of dropping them silently.
    """
    indices: list[int] = []
    targets: list[int] = []
    failed: list[str] = []
    for path, target in zip(table["path"], table["target"], strict=True):
        row = cache.index_of(path)
        if cache.ok[row]:
            indices.append(row)
            targets.append(int(target))
        else:
            failed.append(str(path))
    return indices, targets, failed


@dataclass
class PreparedData:
    """Everything training needs from the data layer: where, which images in which split (the
    ``manifest``), the cache. ``scanned`` is the scan :func:`prepare_data` made; ``None`` when
    the data was read from a run's manifest (:func:`load_run_data`), which scans nothing."""

    location: DatasetLocation
    scanned: ScanResult | None
    splits: dict[str, pd.DataFrame]
    cache: ImageCache
    manifest: pd.DataFrame

    def rows(self, split: str) -> tuple[list[int], list[int]]:
        """Cache rows and targets of one split (images that failed to decode left out)."""
        indices, targets, _ = cache_rows(self.cache, self.splits[split])
        return indices, targets

    def left_out(self, split: str) -> list[dict[str, str]]:
        """The images of ``split`` that failed to decode (``path``, ``reason``): left out of
        its batches, so that every count can say how many and which."""
        _, _, failed = cache_rows(self.cache, self.splits[split])
        reasons = {f["path"]: f["reason"] for f in self.cache.failed}
        return [{"path": path, "reason": reasons.get(path, "")} for path in failed]

    def fingerprint(self) -> str:
        """The manifest's fingerprint (:func:`helpers.manifest.manifest_fingerprint`),
        recorded in ``config.json`` and ``last.pt``."""
        return manifest_fingerprint(self.manifest)

    def loader(self, split: str, config: Config, device: torch.device | str) -> BatchLoader:
        """The batches of ``split`` for ``config``: shuffled and augmented for ``train``, in
        order and untouched for any other split."""
        indices, targets = self.rows(split)
        training = split == "train"
        return BatchLoader(
            self.cache, indices, targets,
            config.batch_size if training else config.eval_batch_size,
            shuffle=training, augment=training, policy=config.augment, seed=config.seed,
            device=device,
        )  # fmt: skip


def prepare_data(
    config: Config, data_dir: str | Path | DatasetLocation | None = None, progress: bool = True
) -> PreparedData:
    """Find, scan, split, hash (the manifest) and cache the dataset for ``config`` (the cache
    is reused when valid). Training writes ``.manifest`` into its run folder. ``data_dir`` may
    be a :class:`DatasetLocation` already found (then it is used as it is, and its ``source``
    is what the run records)."""
    location = data_dir if isinstance(data_dir, DatasetLocation) else find_dataset(data_dir)
    scanned = scan(location.root)
    if len(scanned.problems):
        print(f"skipping {len(scanned.problems)} unusable files (see `python -m helpers scan`)")
    splits = make_splits(scanned.images, config)
    manifest = make_manifest(splits)
    return PreparedData(location, scanned, splits, _cache(manifest, config, progress), manifest)


def load_run_data(
    run_dir: str | Path,
    config: Config,
    data_dir: str | Path | None = None,
    splits: Sequence[str] = SPLITS,
    progress: bool = True,
) -> PreparedData:
    """The data a run used, from its manifest: nothing is found, scanned or split again.

    ``data_dir`` (a moved copy of the dataset) is mapped onto the manifest by relative path
    (:func:`helpers.manifest.relocate`); without it the recorded paths are used. The files of
    ``splits`` are checked against their recorded hashes (:func:`helpers.manifest.verify`:
    a missing or changed file raises :class:`helpers.manifest.ManifestError` naming it). The
    cache is the run's own when every file of the manifest is there (so it is reused),
    otherwise that of the files of ``splits``.
    """
    manifest = read_manifest(run_dir)
    if data_dir is not None:
        manifest = relocate(manifest, data_dir)
    needed = manifest[manifest["split"].isin(splits)]
    where = f"data of the run {run_dir}" + (
        f", looked for in {data_dir}" if data_dir else "; if it moved, give its new folder (--data)"
    )
    verify(needed, where=where)
    present = all(Path(p).is_file() for p in manifest["path"])
    cached = manifest if present else needed
    root = Path(needed["path"].iloc[0]).parents[2] if len(needed) else Path(data_dir or ".")
    location = DatasetLocation(root, "run manifest")
    cache = _cache(cached, config, progress)
    return PreparedData(location, None, splits_of(manifest, splits), cache, manifest)


def _cache(manifest: pd.DataFrame, config: Config, progress: bool) -> ImageCache:
    """The decode-once cache of the manifest's images, in its order (train, val, test)."""
    return build_cache(
        manifest["path"].tolist(), config.image_size, cache_dir(),
        progress=progress, intensity=config.intensity,
    )  # fmt: skip


class BatchLoader:
    """Batches of normalised images from an :class:`ImageCache`, one epoch per ``iter()``.

    Yields ``(x, y)``: ``x`` float32 ``(B, 3, S, S)`` normalised, ``y`` int64 ``(B,)``, on
    ``device``. Epoch ``k`` (the k-th ``iter()``, or the one chosen with :meth:`set_epoch`)
    draws its shuffle order and augmentation from a generator seeded by ``(seed, k)`` only,
    so a resumed run calling ``set_epoch(k)`` sees exactly the batches of the original run.
    With ``shuffle=True`` rows inside each batch are read in ascending cache order (faster;
    the batch's members are unchanged); with ``shuffle=False`` batches follow ``indices``
    exactly, so predictions line up with ``indices``. The last batch may be smaller; a shuffled
    epoch whose last batch would hold a single image leaves that image out (another one each
    epoch), because BatchNorm cannot train on a batch of one (it raised "Expected more than 1
    value per channel" in quick mode on the real data, 401 training images in batches of 16).

    Indices whose image failed to decode are refused (filter them with ``cache.ok``). On CUDA
    the uint8 batch is gathered into pinned memory, copied non-blocking, and augmented and
    normalised on the GPU.
    """

    def __init__(
        self,
        cache: ImageCache,
        indices: Sequence[int],
        targets: Sequence[int],
        batch_size: int,
        *,
        shuffle: bool,
        augment: bool,
        policy: str = "article",
        seed: int,
        device: torch.device | str = "cpu",
    ) -> None:
        self.cache = cache
        self.indices = np.asarray(indices, dtype=np.int64).reshape(-1)
        self.targets = torch.as_tensor(np.asarray(targets, dtype=np.int64).reshape(-1))
        if len(self.targets) != len(self.indices):
            raise ValueError(f"{len(self.indices)} indices but {len(self.targets)} targets")
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if self.indices.size and (self.indices.min() < 0 or self.indices.max() >= len(cache)):
            raise IndexError(f"indices must be cache rows in [0, {len(cache)})")
        bad = self.indices[~cache.ok[self.indices]]
        if bad.size:
            examples = ", ".join(cache.paths[i] for i in bad[:3])
            raise ValueError(
                f"{bad.size} of the indices are images that failed to decode (e.g. {examples}); "
                "filter them out with cache.ok"
            )
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.augment = augment
        if policy not in AUGMENT_POLICIES:
            raise ValueError(
                f"augmentation policy must be one of {AUGMENT_POLICIES}, got {policy!r}"
            )
        self.policy = policy
        self.seed = seed
        self.device = torch.device(device)
        self._epoch = 0

    def __len__(self) -> int:
        batches = math.ceil(len(self.indices) / self.batch_size)
        return batches - 1 if self._drops_a_single_image() else batches

    def _drops_a_single_image(self) -> bool:
        """Whether a shuffled epoch leaves out its last batch, a single image."""
        n = len(self.indices)
        return self.shuffle and n > 1 and n % self.batch_size == 1

    @property
    def epoch(self) -> int:
        """The epoch the next ``iter()`` will produce."""
        return self._epoch

    def set_epoch(self, epoch: int) -> None:
        """Make the next ``iter()`` produce epoch ``epoch`` (for resuming a run)."""
        self._epoch = int(epoch)

    def _generator(self, epoch: int) -> torch.Generator:
        """A CPU generator whose seed depends on ``(seed, epoch)`` only."""
        state = np.random.SeedSequence([self.seed, epoch]).generate_state(1, dtype=np.uint64)[0]
        return torch.Generator().manual_seed(int(state))

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        epoch = self._epoch
        self._epoch += 1
        generator = self._generator(epoch)
        n = len(self.indices)
        order = torch.randperm(n, generator=generator).numpy() if self.shuffle else np.arange(n)
        cuda = self.device.type == "cuda"
        end = n - 1 if self._drops_a_single_image() else n
        for start in range(0, end, self.batch_size):
            pos = order[start : min(start + self.batch_size, end)]
            if self.shuffle:
                pos = pos[np.argsort(self.indices[pos], kind="stable")]
            x = self.cache.batch(self.indices[pos], pin_memory=cuda)
            y = self.targets[torch.from_numpy(pos)]
            x = x.to(self.device, non_blocking=cuda)
            y = y.to(self.device, non_blocking=cuda)
            if self.augment:
                x = augment_policy(x.to(torch.float32).div_(255.0), generator, self.policy)
            yield normalize_batch(x), y
