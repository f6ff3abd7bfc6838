"""Benchmarks behind the numbers the tutorial quotes (``python -m helpers bench ...``).

``bench_loader`` answers "is the decode-once cache worth it?": on the same images, in one
run, how many images per second reach the model as normalised ``(B, 3, S, S)`` float
tensors with a plain per-image pipeline versus the cache, plus what each JPEG decoder costs.
Every rate is the median of several repetitions; augmentation is left out of both sides.

``bench_train`` answers "how much faster does this project train than the original's
structure?": training images per second of a naive epoch (full-resolution decode and
per-image torchvision augmentation in a ``DataLoader``, autograd everywhere) against the
engine's (cache, batch augmentation, frozen prefix without autograd, ``channels_last``),
each in its own process for its peak memory, timed in alternating rounds.
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


# --- bench train: the original's training epoch against the engine's -----------------------

TRAIN_PRETRAINED_CHOICES = ("frozen-random", "imagenet", "none")
"""``bench_train``'s models. ``frozen-random`` (the default) is the ImageNet-frozen architecture
(``PneumoniaNet(frozen=True)``) with random weights: the same FLOPs and trainable parameters
as the article's configuration, hence the same compute, with no download. ``imagenet`` loads
the real weights (needs them cached or a connection); ``none`` trains the whole network."""

TRAIN_COMPARISONS: dict[str, tuple[str, dict[str, Any]]] = {
    "2-threads": ("engine, 2 torch threads", {"threads": 2}),
    "contiguous": ("engine without channels_last", {"channels_last": False}),
    "grad-prefix": ("engine, autograd on over the frozen prefix", {"no_grad_prefix": False}),
    "unfolded-bn": (
        "engine, BatchNorm not folded into the frozen convs",
        {"fuse_frozen_bn": False},
    ),
    "robust": ("engine, robust augmentation policy", {"policy": "robust"}),
    "naive-1-worker": ("naive, DataLoader num_workers=1", {"kind": "naive", "num_workers": 1}),
}
"""Optional extra variants (``compare=``), timed in the same interleaved rounds and reported
relative to the engine: engine variants, and the naive side with one loader worker process
(decoding then overlaps the model's work on the second core)."""


class NaiveTrainDataset(torch.utils.data.Dataset):
    """Our re-creation of the original notebook's training data path (our code, not its):
    every access decodes the full-resolution file with PIL and runs the per-image
    torchvision pipeline :func:`helpers.preprocess.train_transform` (grey, bicubic resize,
    the article's ``RandomChoice`` augmentation, 3 channels, ImageNet normalisation)."""

    def __init__(self, paths: list[str], targets: list[int], size: int) -> None:
        from helpers.preprocess import train_transform

        self.paths, self.targets = paths, targets
        self.transform = train_transform(size)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        with Image.open(self.paths[i]) as image:
            return self.transform(image), self.targets[i]


class _TimedLoader:
    """Wraps a loader and adds up the seconds spent waiting for its next batch: the data side
    of a training epoch (gather or decode, augmentation, normalisation)."""

    def __init__(self, loader: Any) -> None:
        self.loader = loader
        self.seconds = 0.0

    def __iter__(self):
        batches = iter(self.loader)
        while True:
            start = time.perf_counter()
            try:
                batch = next(batches)
            except StopIteration:
                self.seconds += time.perf_counter() - start
                return
            self.seconds += time.perf_counter() - start
            yield batch


class _FirstBatch:
    """A loader's first batch only: one warm-up step."""

    def __init__(self, loader: Any) -> None:
        self.loader = loader

    def __iter__(self):
        for batch in self.loader:
            yield batch
            return


def _rss_mb(field: str) -> float | None:
    """A memory line of ``/proc/self/status`` in MB (``VmHWM`` peak resident, ``VmRSS``
    current resident); None where there is no ``/proc`` (not Linux)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def _peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MB (``VmHWM``, else ``ru_maxrss``)."""
    peak = _rss_mb("VmHWM")
    if peak is not None:
        return peak
    import resource
    import sys

    kilo = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kilo / 2**20 if sys.platform == "darwin" else kilo / 1024  # bytes on macOS, else KB


def _bench_model(pretrained: str, seed: int) -> torch.nn.Module:
    """The model a variant trains (see :data:`TRAIN_PRETRAINED_CHOICES`), seeded."""
    from helpers.model import PneumoniaNet, build_model
    from helpers.train import use_scratch_batchnorm

    torch.manual_seed(seed)
    if pretrained == "frozen-random":
        return PneumoniaNet(frozen=True)
    model = build_model(pretrained)
    if not model.frozen:
        use_scratch_batchnorm(model)
    return model


def _naive_epoch(model, loader, criterion, optimizer, grad_clip: float, device) -> None:
    """The original notebook's loop structure, written plainly: batch to the device, forward,
    weighted loss, backward, gradient clipping, AdamW step (float32, no AMP)."""
    params = [p for p in model.parameters() if p.requires_grad]
    model.train()
    for x, y in loader:
        x, y = x.to(device), y.to(device)
        optimizer.zero_grad()
        loss = criterion(model(x), y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, grad_clip)
        optimizer.step()


def _train_worker(spec: dict[str, Any], send: Callable[[dict[str, Any]], None], commands) -> None:
    """One variant, in a process of its own so that its peak memory is its own: set up, warm
    up with one training step, then time one epoch per ``"epoch"`` line of ``commands``
    until ``"stop"``. Replies go through ``send``.

    ``naive``: :class:`NaiveTrainDataset` + ``DataLoader(batch_size=64, shuffle=True)``,
    autograd over the whole model, :func:`_naive_epoch`. ``engine``: the cache, a
    :class:`BatchLoader` with batch augmentation, the frozen prefix without autograd,
    ``channels_last`` (:func:`helpers.train.to_channels_last`) and
    :func:`helpers.train.run_epoch`, as :func:`helpers.train.train` does.
    """
    torch.set_num_threads(spec["threads"])
    import_rss_mb = _peak_rss_mb()  # Python + torch + torchvision alone: a large fixed share
    from helpers.config import CLASSES, Config
    from helpers.data import class_weights
    from helpers.model import parameter_groups
    from helpers.train import run_epoch, to_channels_last

    config = Config()
    device = torch.device(spec.get("device", "cpu"))
    paths, targets, size, seed = spec["paths"], spec["targets"], spec["size"], spec["seed"]
    model = _bench_model(spec["pretrained"], seed).to(device)
    weights = torch.tensor([class_weights(targets)[c] for c in CLASSES], device=device)
    criterion = torch.nn.CrossEntropyLoss(weight=weights)
    if spec["kind"] == "naive":
        model.no_grad_prefix = False  # autograd mode everywhere, as a plain nn.Module
        model.fuse_frozen_bn = False  # the model's own layers, BatchNorm not folded
        loader = torch.utils.data.DataLoader(
            NaiveTrainDataset(paths, targets, size),
            batch_size=BATCH_SIZE,
            shuffle=True,
            num_workers=spec.get("num_workers", 0),  # 0 by default, as the original
            generator=torch.Generator().manual_seed(seed),
        )
    else:
        model.no_grad_prefix = spec.get("no_grad_prefix", True)
        model.fuse_frozen_bn = spec.get("fuse_frozen_bn", True)
        if spec.get("channels_last", True):
            model = to_channels_last(model, device)
        cache = build_cache(paths, size, Path(spec["cache_dir"]), progress=False)
        loader = BatchLoader(
            cache, [cache.index_of(p) for p in paths], targets, BATCH_SIZE, shuffle=True,
            augment=True, policy=spec.get("policy", "article"), seed=seed, device=device,
        )  # fmt: skip
    optimizer = torch.optim.AdamW(
        parameter_groups(model, config),
        betas=config.betas,
        eps=config.eps,
        weight_decay=config.weight_decay,
    )

    def epoch(batches) -> None:
        if spec["kind"] == "naive":
            _naive_epoch(model, batches, criterion, optimizer, config.grad_clip, device)
        else:
            run_epoch(model, batches, criterion, device, optimizer, None, config.grad_clip)
        if device.type == "cuda":
            torch.cuda.synchronize(device)  # the epoch is over when the GPU is done

    start = time.perf_counter()
    epoch(_FirstBatch(loader))  # warm-up (allocations, optimizer state); not timed
    send({"status": "ready", "setup_s": time.perf_counter() - start,
          "import_rss_mb": import_rss_mb, "ready_rss_mb": _peak_rss_mb()})  # fmt: skip
    for command in commands:
        if command.strip() != "epoch":
            break
        timed = _TimedLoader(loader)
        start = time.perf_counter()
        epoch(timed)
        send({"status": "ok", "seconds": time.perf_counter() - start,
              "data_seconds": timed.seconds})  # fmt: skip
    gpu_mb = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    send({"status": "done", "peak_rss_mb": _peak_rss_mb(), "peak_gpu_mb": gpu_mb})


def _worker_main() -> None:
    """Entry point of a worker process: the spec is the first JSON line on stdin, then one
    command per line; replies are JSON lines on the original stdout. Anything else the
    process prints goes to stderr, so it cannot corrupt the replies."""
    import json
    import os
    import sys
    import traceback

    channel = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    sys.stdout = sys.stderr

    def send(message: dict[str, Any]) -> None:
        channel.write(json.dumps(message) + "\n")
        channel.flush()

    try:
        _train_worker(json.loads(sys.stdin.readline()), send, sys.stdin)
    except BaseException:  # the parent raises with this traceback
        send({"status": "error", "traceback": traceback.format_exc()})
    channel.close()
    sys.stderr.flush()
    os._exit(0)  # everything is reported; skip the interpreter's slow teardown of torch


def _start_worker(spec: dict[str, Any]):
    """A fresh Python process running :func:`_worker_main` on this checkout's ``helpers``
    (a subprocess, not ``multiprocessing``: it works from scripts without a main guard)."""
    import json
    import os
    import subprocess
    import sys

    root = str(Path(__file__).resolve().parents[1])
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    process = subprocess.Popen(
        [sys.executable, "-c", "from helpers.bench import _worker_main; _worker_main()"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    process.stdin.write(json.dumps(spec) + "\n")
    process.stdin.flush()
    return process


def _receive(process, name: str) -> dict[str, Any]:
    """A worker's next reply; a clear error naming the variant when it failed or died."""
    import json

    line = process.stdout.readline()
    if not line:
        code = process.wait(30)
        raise RuntimeError(
            f"bench train: the {name} worker ended without a reply (exit code {code}; "
            "killed for memory?)"
        )
    message = json.loads(line)
    if message["status"] == "error":
        raise RuntimeError(f"bench train: the {name} worker failed:\n{message['traceback']}")
    return message


def run_interleaved(
    variants: dict[str, dict[str, Any]], common: dict[str, Any], repeats: int
) -> dict[str, dict[str, Any]]:
    """Time training epochs of several variants, each in its own process, interleaved.

    The workers start (and warm up, untimed) together; then each round times one
    epoch of every variant in turn (A B A B ...), so that a slow patch of a shared machine
    hits all variants alike and per-round ratios stay fair. Returns, per variant, the
    per-round ``seconds`` and ``data_seconds``, the warm-up time ``setup_s``, and the
    worker's resident memory after importing torch (``import_rss_mb``), after warm-up
    (``ready_rss_mb``) and at its peak (``peak_rss_mb``), and its peak CUDA memory
    (``peak_gpu_mb``, None on CPU).
    """
    workers: dict[str, Any] = {}
    results: dict[str, dict[str, Any]] = {}

    def command(process, text: str) -> None:
        process.stdin.write(text + "\n")
        process.stdin.flush()

    try:
        for name, variant in variants.items():  # start together: imports and warm-up overlap
            workers[name] = _start_worker({**common, **variant})
        for name, process in workers.items():
            results[name] = {"seconds": [], "data_seconds": [], **_receive(process, name)}
        for _ in range(repeats):
            for name, process in workers.items():
                command(process, "epoch")
                timing = _receive(process, name)
                results[name]["seconds"].append(timing["seconds"])
                results[name]["data_seconds"].append(timing["data_seconds"])
        for name, process in workers.items():
            command(process, "stop")
            done = _receive(process, name)
            results[name].update(peak_rss_mb=done["peak_rss_mb"], peak_gpu_mb=done["peak_gpu_mb"])
    finally:
        for process in workers.values():  # normally they have already exited
            try:
                process.stdin.close()
            except OSError:
                pass
            try:
                process.wait(10)
            except Exception:
                process.kill()
                process.wait()
            process.stdout.close()
    return results


def _spread(paths: list[str], targets: list[int], limit: int | None):
    """At most ``limit`` of the images, evenly spread over the sorted list (both classes)."""
    if limit is None or limit >= len(paths):
        return paths, targets
    keep = np.linspace(0, len(paths) - 1, limit).round().astype(int)
    return [paths[i] for i in keep], [targets[i] for i in keep]


def bench_train(
    data_dir: str | Path,
    image_size: int = 256,
    pretrained: str = "frozen-random",
    quick: bool = False,
    *,
    threads: int = 1,
    compare: tuple[str, ...] | list[str] = (),
    max_images: int | None = None,
    repeats: int | None = None,
    seed: int = 0,
    device: str | None = None,
) -> dict[str, Any]:
    """Training images/second of the original's structure ("naive") against this project's
    engine, on the same images, in one run; print and return the figures.

    * naive: :class:`NaiveTrainDataset` (full-resolution decode + the article's per-image
      torchvision augmentation) in a default ``DataLoader(batch_size=64, shuffle=True)``
      (``num_workers=0``, the default; ``compare=["naive-1-worker"]`` times one worker
      process, which overlaps decoding with the model on a second core), a plain loop
      with autograd over the whole model, float32, AdamW, gradient clipping.
    * engine: the decode-once cache (built first, timed separately, not part of the epochs),
      :class:`BatchLoader` with batch augmentation (the article's policy, like for like),
      no autograd over the frozen prefix, ``channels_last``, :func:`helpers.train.run_epoch`.

    Each variant runs in its own process (its peak resident memory is its own; about 0.7 GB
    of it is Python + torch + torchvision, reported as ``import_rss_mb``) with ``threads``
    torch threads; epochs alternate between the variants (A B A B ...) and ``speedup`` is
    the median of the per-round ratios, robust to a machine shared with other work.
    ``engine_data_fraction`` is the share of the engine's epoch spent waiting for batches.
    ``compare`` adds variants from :data:`TRAIN_COMPARISONS` to the same rounds.
    ``quick``: at most 64 images and 2 rounds (well under a minute at 256 px).
    ``device``: as :func:`helpers.train.pick_device` (CUDA when available, else CPU); on
    CUDA the engine also uses mixed precision, as training does, and ``*_peak_gpu_mb`` are
    filled in.
    """
    from helpers.config import CLASSES
    from helpers.train import pick_device

    dev = pick_device(device)

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
    if pretrained == "imagenet":  # fail here, with the model's clear message, not in a worker
        from helpers.model import load_imagenet_state_dict

        load_imagenet_state_dict()
    paths, targets = find_images(data_dir)
    if not paths:
        raise FileNotFoundError(f"{data_dir}: no images found")
    paths, targets = _spread(paths, targets, 64 if quick else max_images)
    repeats = repeats or (2 if quick else 5)

    with tempfile.TemporaryDirectory(prefix="bench-train-", ignore_cleanup_errors=True) as tmp:
        start = time.perf_counter()
        cache = build_cache(paths, image_size, Path(tmp), progress=False)
        build_s = time.perf_counter() - start
        ok = [i for i, p in enumerate(paths) if cache.ok[cache.index_of(p)]]
        if len(ok) < len(paths):
            print(f"{len(paths) - len(ok)} images failed to decode and are left out of both sides:")
            for failure in cache.failed:
                print(f"  {failure['path']}: {failure['reason']}")
        paths, targets = [paths[i] for i in ok], [targets[i] for i in ok]
        present = set(targets)
        if len(present) < len(CLASSES):
            raise FileNotFoundError(f"{data_dir}: images of both classes are needed")
        n = len(paths)
        print(
            f"train benchmark: {n} images from {data_dir} at {image_size}x{image_size}, "
            f"model {pretrained}, batch {BATCH_SIZE}, device {dev}, torch threads {threads}, "
            f"{repeats} interleaved rounds, each variant in its own process"
        )
        common = {
            "paths": paths, "targets": targets, "size": image_size, "seed": seed,
            "pretrained": pretrained, "cache_dir": tmp, "threads": threads, "device": str(dev),
        }  # fmt: skip
        variants = {"naive": {"kind": "naive"}, "engine": {"kind": "engine"}}
        for name in compare:
            variants[name] = {"kind": "engine", **TRAIN_COMPARISONS[name][1]}
        runs = run_interleaved(variants, common, repeats)

    def summary(run: dict[str, Any]) -> dict[str, Any]:
        return {
            "images_per_s": statistics.median(n / s for s in run["seconds"]),
            "data_fraction": statistics.median(
                d / s for d, s in zip(run["data_seconds"], run["seconds"], strict=True)
            ),
            "peak_rss_mb": run["peak_rss_mb"],
            "peak_gpu_mb": run["peak_gpu_mb"],
            "import_rss_mb": run["import_rss_mb"],
            "seconds": run["seconds"],
        }

    naive, engine = summary(runs["naive"]), summary(runs["engine"])
    pair_speedups = [
        a / b for a, b in zip(runs["naive"]["seconds"], runs["engine"]["seconds"], strict=True)
    ]
    comparisons = {}
    for name in compare:
        extra = summary(runs[name])
        ratios = [
            a / b for a, b in zip(runs["engine"]["seconds"], runs[name]["seconds"], strict=True)
        ]
        comparisons[name] = {**extra, "pair_ratios": ratios, "ratio": statistics.median(ratios)}
    result = {
        "images": n,
        "image_size": image_size,
        "pretrained": pretrained,
        "device": str(dev),
        "threads": threads,
        "batch_size": BATCH_SIZE,
        "repeats": repeats,
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
        "cache_megabytes": n * image_size * image_size / 1e6,
        "compare": comparisons,
    }
    _print_train_report(result)
    return result


def _print_train_report(r: dict[str, Any]) -> None:
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


CPU_TRAINING_RATES: dict[str, float] = {"frozen": 191.0, "scratch": 41.7}
"""Training images/second at 256x256 measured by ``bench train`` on a 2-core CPU (Xeon,
2 torch threads, idle machine, 2026-11-25; see benchmarks/README.md): the article's frozen
ImageNet configuration, and the whole network trained from scratch (1 thread: 21 naive / 42
engine). Used only to tell a reader roughly how long a full run would take on such a CPU."""


def estimate_cpu_schedule(
    n_train: int, n_val: int, frozen: bool, epochs: int, image_size: int = 256
) -> dict[str, float]:
    """Rough wall time of a full training run on a 2-core CPU, from the measured rates.

    Seconds per epoch = training images / rate + validation images / (3 x rate) (evaluation
    needs no backward pass), scaled by the pixel count relative to 256x256. Returns seconds
    per epoch and hours for ``epochs`` epochs (the maximum; early stopping usually ends
    sooner). GPU runs are not estimated: no GPU was measured.
    """
    rate = CPU_TRAINING_RATES["frozen" if frozen else "scratch"] * (256 / image_size) ** 2
    per_epoch = n_train / rate + n_val / (3 * rate)
    return {"seconds_per_epoch": per_epoch, "hours": per_epoch * epochs / 3600}
