"""What one ``bench train`` variant does inside its worker process.

Two kinds of variant train the same network on the same images with the same recipe:

* ``naive``: our re-creation of the original notebook's structure (our code, not its):
  full-resolution decode and per-image torchvision augmentation in a ``DataLoader``, a
  plain :class:`helpers.model.PneumoniaNet` (autograd mode everywhere, BatchNorm layers as
  they are), float32, a plain loop.
* ``engine``: this project's training path, as :func:`helpers.train.train` sets it up: the
  decode-once cache, :class:`helpers.loader.BatchLoader` with batch augmentation,
  ``channels_last``, :func:`helpers.fold.with_folded_prefix` and
  :func:`helpers.train.run_epoch`.

:data:`TRAIN_COMPARISONS` lists engine variants that leave out one of those steps.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import nn

from benchmarks.common import BATCH_SIZE
from benchmarks.worker import peak_rss_mb
from helpers.augment import train_transform
from helpers.cache import build_cache
from helpers.config import Config
from helpers.data import class_weights
from helpers.fold import FrozenFeatures, with_folded_prefix
from helpers.loader import BatchLoader
from helpers.model import PneumoniaNet, build_model
from helpers.recipe import make_optimizer, to_channels_last, use_scratch_batchnorm, weighted_loss
from helpers.train import run_epoch

TRAIN_PRETRAINED_CHOICES = ("frozen-random", "imagenet", "none")
"""``bench train``'s models. ``frozen-random`` (the default) is the ImageNet-frozen architecture
(``PneumoniaNet(frozen=True)``) with random weights: the same FLOPs and trainable parameters
as the article's configuration, hence the same compute, with no download. ``imagenet`` loads
the real weights (needs them cached or a connection); ``none`` trains the whole network."""

TRAIN_COMPARISONS: dict[str, tuple[str, dict[str, Any]]] = {
    "2-threads": ("engine, 2 torch threads", {"threads": 2}),
    "contiguous": ("engine without channels_last", {"channels_last": False}),
    "grad-prefix": ("engine, autograd on over the frozen prefix", {"prefix": "autograd"}),
    "unfolded-bn": ("engine, BatchNorm not folded (plain model)", {"prefix": "plain"}),
    "robust": ("engine, robust augmentation policy", {"policy": "robust"}),
    "naive-1-worker": ("naive, DataLoader num_workers=1", {"kind": "naive", "num_workers": 1}),
}
"""Optional extra variants (``compare=``), timed in the same interleaved rounds and reported
relative to the engine: its label and the spec entries it changes.

The engine runs :func:`helpers.fold.with_folded_prefix` of the model: a BatchNorm-folded
copy of the frozen prefix, under ``torch.no_grad()``. ``unfolded-bn`` trains the plain
model instead (the fold step left out; autograd mode is then on over the prefix too, which
records nothing there since its parameters do not require gradients); ``grad-prefix`` keeps
the fold and leaves out only ``no_grad``. ``naive-1-worker`` gives the naive side one loader
worker process (decoding then overlaps the model's work on a second core)."""


class NaiveTrainDataset(torch.utils.data.Dataset):
    """Our re-creation of the original notebook's training data path (our code, not its):
    every access decodes the full-resolution file with PIL and runs the per-image
    torchvision pipeline :func:`helpers.augment.train_transform` (grey, bicubic resize,
    the article's ``RandomChoice`` augmentation, 3 channels, ImageNet normalisation)."""

    def __init__(self, paths: list[str], targets: list[int], size: int) -> None:
        self.paths, self.targets = paths, targets
        self.transform = train_transform(size)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        with Image.open(self.paths[i]) as image:
            return self.transform(image), self.targets[i]


class TimedLoader:
    """Wraps a loader and adds up the seconds spent waiting for its next batch: the data side
    of a training epoch (gather or decode, augmentation, normalisation)."""

    def __init__(self, loader: Iterable[Any]) -> None:
        self.loader = loader
        self.seconds = 0.0

    def __iter__(self) -> Iterator[Any]:
        batches = iter(self.loader)
        while True:
            start = time.perf_counter()
            batch = next(batches, None)
            self.seconds += time.perf_counter() - start
            if batch is None:
                return
            yield batch


class FirstBatch:
    """A loader's first batch only: one warm-up step."""

    def __init__(self, loader: Iterable[Any]) -> None:
        self.loader = loader

    def __iter__(self) -> Iterator[Any]:
        for batch in self.loader:
            yield batch
            return


class AutogradPrefix(FrozenFeatures):
    """A frozen prefix kept in eval mode, but run with autograd on (``grad-prefix``)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


def bench_model(pretrained: str, seed: int) -> PneumoniaNet:
    """The model a variant trains (see :data:`TRAIN_PRETRAINED_CHOICES`), seeded."""
    torch.manual_seed(seed)
    if pretrained == "frozen-random":
        return PneumoniaNet(frozen=True)
    model = build_model(pretrained)
    if not model.frozen:
        use_scratch_batchnorm(model)
    return model


def engine_module(model: PneumoniaNet, prefix: str) -> nn.Module:
    """The module the engine's epochs run: ``"folded"`` (as training does), ``"plain"``
    (the model itself) or ``"autograd"`` (folded, without ``no_grad``)."""
    if prefix == "plain":
        return model
    fast = with_folded_prefix(model)
    if prefix == "autograd" and isinstance(fast[0], FrozenFeatures):
        fast[0] = AutogradPrefix(fast[0].layers)
    return fast


def naive_epoch(
    model: nn.Module,
    loader: Iterable[tuple[torch.Tensor, torch.Tensor]],
    criterion: nn.Module,
    optimizer: torch.optim.Optimizer,
    grad_clip: float | None,
    device: torch.device,
) -> None:
    """The original notebook's loop structure, written plainly: batch to the device, forward,
    weighted loss, backward, gradient clipping, AdamW step (float32, no AMP)."""
    params = [p for p in model.parameters() if p.requires_grad]
    model.train()
    for x, y in loader:
        x, y = x.to(device), y.to(device)
        optimizer.zero_grad()
        loss = criterion(model(x), y)
        loss.backward()
        if grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(params, grad_clip)
        optimizer.step()


def naive_loader(spec: dict[str, Any]) -> torch.utils.data.DataLoader:
    """The naive side's batches: a default ``DataLoader(batch_size=64, shuffle=True)``."""
    return torch.utils.data.DataLoader(
        NaiveTrainDataset(spec["paths"], spec["targets"], spec["size"]),
        batch_size=BATCH_SIZE,
        shuffle=True,
        num_workers=spec.get("num_workers", 0),  # 0 by default, as the original
        generator=torch.Generator().manual_seed(spec["seed"]),
    )


def engine_loader(spec: dict[str, Any], device: torch.device) -> BatchLoader:
    """The engine's batches: the cache the parent built, with batch augmentation."""
    cache = build_cache(spec["paths"], spec["size"], Path(spec["cache_dir"]), progress=False)
    return BatchLoader(
        cache, [cache.index_of(p) for p in spec["paths"]], spec["targets"], BATCH_SIZE,
        shuffle=True, augment=True, policy=spec.get("policy", "article"), seed=spec["seed"],
        device=device,
    )  # fmt: skip


def make_epoch(spec: dict[str, Any], device: torch.device) -> tuple[Callable, Iterable]:
    """``(epoch, loader)`` for the variant ``spec``: ``epoch(batches)`` trains on them.

    Built as :func:`helpers.train.train` builds its run (for the engine): model, memory
    format, optimizer over the model's parameter groups, then the module the epochs run.
    """
    config = Config()
    model = bench_model(spec["pretrained"], spec["seed"]).to(device)
    criterion = weighted_loss(class_weights(spec["targets"]), config, device)
    naive = spec["kind"] == "naive"
    if not naive and spec.get("channels_last", True):
        model = to_channels_last(model, device)
    optimizer, _ = make_optimizer(model, config)  # AdamW, the two groups; no schedule here
    if naive:
        loader, module = naive_loader(spec), model
    else:
        loader = engine_loader(spec, device)
        module = engine_module(model, spec.get("prefix", "folded"))

    def epoch(batches: Iterable[Any]) -> None:
        if naive:
            naive_epoch(module, batches, criterion, optimizer, config.grad_clip, device)
        else:
            run_epoch(module, batches, criterion, device, optimizer, None, config.grad_clip)
        if device.type == "cuda":
            torch.cuda.synchronize(device)  # the epoch is over when the GPU is done

    return epoch, loader


def serve_variant(
    spec: dict[str, Any],
    send: Callable[[dict[str, Any]], None],
    commands: Iterable[str],
    import_rss_mb: float,
) -> None:
    """Run one variant in this process: set up, warm up with one training step, then time
    one epoch per ``"epoch"`` line of ``commands`` until any other line. Replies go through
    ``send`` (see :mod:`benchmarks.worker` for the protocol); ``import_rss_mb``, the memory
    the process held after importing torch, is passed on in the ``ready`` reply."""
    torch.set_num_threads(spec["threads"])
    device = torch.device(spec.get("device", "cpu"))
    epoch, loader = make_epoch(spec, device)
    start = time.perf_counter()
    epoch(FirstBatch(loader))  # warm-up (allocations, optimizer state); not timed
    send({"status": "ready", "setup_s": time.perf_counter() - start,
          "import_rss_mb": import_rss_mb, "ready_rss_mb": peak_rss_mb()})  # fmt: skip
    for command in commands:
        if command.strip() != "epoch":
            break
        timed = TimedLoader(loader)
        start = time.perf_counter()
        epoch(timed)
        send({"status": "ok", "seconds": time.perf_counter() - start,
              "data_seconds": timed.seconds})  # fmt: skip
    gpu_mb = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    send({"status": "done", "peak_rss_mb": peak_rss_mb(), "peak_gpu_mb": gpu_mb})
