"""From image files to normalised batches: decode once, cache, augment whole batches.

Decoding a 1-3 megapixel chest X-ray costs a few milliseconds; doing it for every image of
every epoch (what a plain ``ImageFolder`` pipeline does) dominates training time on a CPU.
This module decodes each image **once** to a small grayscale square and keeps all of them
in one memory-mapped ``uint8`` array (:func:`build_cache`). Training then reads batches
from that array and augments/normalises whole batches with tensor operations
(:func:`augment_batch`, :func:`normalize_batch`, :class:`BatchLoader`): no per-image Python
in the training loop.

The flow (see ``docs/architecture.md``)::

    files --load_gray--> cache uint8 (N, S, S) --BatchLoader--> uint8 (B, 1, S, S)
          --augment_batch (train only)--> --normalize_batch--> float (B, 3, S, S)

Images are squashed to ``S x S`` (aspect ratio not preserved), as the article does.
Per-image torchvision pipelines (:func:`train_transform`, :func:`eval_transform`) remain for
showing single images and for comparison.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import time
import warnings
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError
from torchvision import transforms as T

from helpers.config import IMAGENET_MEAN, IMAGENET_STD, MAX_IMAGE_PIXELS
from helpers.files import atomic_write_text

CACHE_FORMAT_VERSION = 1
"""Bump when decoding changes, so that every existing cache is rebuilt."""

MAX_PIXELS = MAX_IMAGE_PIXELS
"""Images with more pixels than this are refused as decompression bombs (see the config)."""

DRAFT_FACTOR = 2
"""JPEGs are decoded at a reduced DCT scale, but never below ``DRAFT_FACTOR x`` the target
size; bicubic resizing then does the rest. Measured on the 144 full-resolution Kermany
images at 256 px: mean absolute difference 0.13 grey levels (worst image 0.70) against a
full decode, 1.4x faster (``python -m helpers bench loader``)."""

DECODE_WORKERS = 2
"""Threads decoding while the cache is built. Pillow releases the GIL while decoding and
resizing, so two threads give about 1.9x on two cores (measured on the full-resolution
sample); more would only compete with the rest of the machine."""

SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")


@functools.lru_cache(maxsize=8)
def _imagenet_stats(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """ImageNet mean and std as float32 ``(1, 3, 1, 1)`` tensors on ``device`` (made once per
    device, so a GPU loop does not copy them every batch)."""
    mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=torch.float32).view(1, 3, 1, 1)
    return mean.to(device), std.to(device)


# The article's augmentation parameters (torchvision semantics).
JITTER_BRIGHTNESS = 0.2
JITTER_CONTRAST = 0.2
AFFINE_DEGREES = 10.0
AFFINE_TRANSLATE = (0.1, 0.1)
AFFINE_SHEAR = 2.0


class ImageError(ValueError):
    """An image file that cannot be used; the message names the file and the problem."""

    def __init__(self, path: str | Path, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


# --- decoding ---------------------------------------------------------------------------


def to_gray(image: Image.Image) -> Image.Image:
    """Convert a PIL image of any mode to one grey channel: mode ``L``, or ``F`` (0-255 floats)
    for more-than-8-bit images so that resizing keeps their precision.

    * ``L``: unchanged. ``RGB``, ``RGBA``, ``LA``, ``1``, ``YCbCr``: ``convert("L")`` (ITU-R
      601 luma; alpha is ignored, as ``ImageFolder``'s ``convert("RGB")`` would).
    * ``P``/``PA``: the palette is applied first. ``CMYK``: via RGB.
    * 16-bit and 32-bit grey (``I;16``, ``I``): scaled by the bit depth the pixels actually
      use (the smallest of 8, 9, ..., 31 bits holding the maximum), so a 12-bit X-ray stored in
      16-bit words (max 4095) spans 0-255 instead of being clipped or crushed to black.
      ``F`` images with values in [0, 1] are scaled by 255.
    """
    mode = image.mode
    if mode == "L":
        return image
    if mode in SIXTEEN_BIT_MODES:
        pixels = np.asarray(image, dtype=np.float64)
        pixels = np.nan_to_num(np.clip(pixels, 0.0, None))
        top = float(pixels.max()) if pixels.size else 0.0
        if mode == "F" and top <= 1.0:
            scale = 255.0
        else:
            bits = max(8, int(math.ceil(top)).bit_length())
            scale = 255.0 / (2**bits - 1)
        return Image.fromarray((pixels * scale).astype(np.float32), mode="F")
    if mode in ("P", "PA"):
        return image.convert("RGBA").convert("L")
    if mode == "CMYK":
        return image.convert("RGB").convert("L")
    return image.convert("L")


def gray_resize(image: Image.Image, size: int) -> np.ndarray:
    """Any-mode PIL image -> uint8 ``(size, size)`` array: :func:`to_gray`, then bicubic resize
    (Pillow's, which antialiases when shrinking). The aspect ratio is not preserved."""
    gray = to_gray(image)
    resized = gray.resize((size, size), Image.Resampling.BICUBIC)
    if resized.mode == "L":
        return np.array(resized, dtype=np.uint8)  # a writable copy
    return np.clip(np.rint(np.asarray(resized, dtype=np.float32)), 0, 255).astype(np.uint8)


INTENSITY_CHOICES = ("none", "equalize", "clahe")
"""Per-image intensity normalisation applied after resizing (``Config.intensity``)."""

CLAHE_TILES = 8
CLAHE_CLIP = 2.0


def equalize(image: np.ndarray) -> np.ndarray:
    """Global histogram equalisation of a uint8 image: grey levels mapped through their CDF.

    Any strictly increasing change of exposure or contrast (gamma, gain, offset) leaves the
    ranks of the pixels unchanged, so the equalised image barely depends on it: what differs
    between X-ray machines is largely removed before the network sees the image.
    """
    hist = np.bincount(image.ravel(), minlength=256)
    cdf = np.cumsum(hist)
    lut = np.rint(255.0 * cdf / cdf[-1]).astype(np.uint8)
    return lut[image]


def clahe(image: np.ndarray, tiles: int = CLAHE_TILES, clip: float = CLAHE_CLIP) -> np.ndarray:
    """Contrast-limited adaptive histogram equalisation (CLAHE) of a uint8 image.

    The image is cut into ``tiles x tiles`` regions; each gets its own equalisation curve,
    from a histogram clipped at ``clip`` times the mean bin count (the clipped excess is
    spread evenly over all bins), which limits how much noise in flat regions is amplified.
    Each pixel's output blends the curves of the four nearest region centres bilinearly, so
    no seams show. ``tiles=1`` with a very large ``clip`` is :func:`equalize`.
    """
    if image.ndim != 2 or image.dtype != np.uint8:
        raise ValueError(f"clahe expects a 2-D uint8 image, got {image.dtype} {image.shape}")
    height, width = image.shape
    rows = np.linspace(0, height, tiles + 1).round().astype(int)
    cols = np.linspace(0, width, tiles + 1).round().astype(int)
    curves = np.empty((tiles, tiles, 256), dtype=np.float64)
    for i in range(tiles):
        for j in range(tiles):
            region = image[rows[i] : rows[i + 1], cols[j] : cols[j + 1]]
            hist = np.bincount(region.ravel(), minlength=256).astype(np.float64)
            limit = max(1.0, clip * region.size / 256)
            excess = np.maximum(hist - limit, 0.0).sum()
            hist = np.minimum(hist, limit) + excess / 256
            curves[i, j] = 255.0 * np.cumsum(hist) / region.size
    # Fractional region coordinates of every row and column (clamped at the borders).
    fy = np.interp(np.arange(height), (rows[:-1] + rows[1:] - 1) / 2, np.arange(tiles))
    fx = np.interp(np.arange(width), (cols[:-1] + cols[1:] - 1) / 2, np.arange(tiles))
    y0, x0 = np.floor(fy).astype(int), np.floor(fx).astype(int)
    y1, x1 = np.minimum(y0 + 1, tiles - 1), np.minimum(x0 + 1, tiles - 1)
    wy, wx = (fy - y0)[:, None], (fx - x0)[None, :]
    y0, y1, x0, x1 = y0[:, None], y1[:, None], x0[None, :], x1[None, :]
    top = (1 - wx) * curves[y0, x0, image] + wx * curves[y0, x1, image]
    bottom = (1 - wx) * curves[y1, x0, image] + wx * curves[y1, x1, image]
    return np.clip(np.rint((1 - wy) * top + wy * bottom), 0, 255).astype(np.uint8)


def normalize_intensity(image: np.ndarray, mode: str) -> np.ndarray:
    """Apply ``mode`` (one of :data:`INTENSITY_CHOICES`) to a uint8 grey image."""
    if mode == "none":
        return image
    if mode == "equalize":
        return equalize(image)
    if mode == "clahe":
        return clahe(image)
    raise ValueError(f"intensity must be one of {INTENSITY_CHOICES}, got {mode!r}")


def load_gray(
    path: str | Path, size: int, *, draft: bool = True, intensity: str = "none"
) -> np.ndarray:
    """Decode one image file to a uint8 ``(size, size)`` grayscale array (bicubic, squashed).

    ``intensity`` then applies a per-image normalisation (:func:`normalize_intensity`).

    JPEGs are decoded with ``Image.draft`` at a reduced DCT scale when the target is much
    smaller (never below ``DRAFT_FACTOR x size``); ``draft=False`` forces a full decode.
    Raises :class:`ImageError` naming the file for a missing/empty/truncated file, something
    that is not an image, an unsupported mode, or more than ``MAX_PIXELS`` pixels.
    """
    path = Path(path)
    if intensity not in INTENSITY_CHOICES:
        raise ValueError(f"intensity must be one of {INTENSITY_CHOICES}, got {intensity!r}")
    try:
        nbytes = path.stat().st_size
    except OSError as err:
        raise ImageError(path, f"cannot read file ({err.strerror or err})") from err
    if nbytes == 0:
        raise ImageError(path, "zero bytes (empty file)")
    try:
        with Image.open(path) as image:
            width, height = image.size
            if width * height > MAX_PIXELS:
                raise ImageError(
                    path,
                    f"decompression bomb refused: {width}x{height} = "
                    f"{width * height / 1e6:.0f} megapixels > {MAX_PIXELS / 1e6:.0f} MP limit",
                )
            if draft and image.format == "JPEG":
                image.draft("L", (DRAFT_FACTOR * size, DRAFT_FACTOR * size))
            image.load()
            return normalize_intensity(gray_resize(image, size), intensity)
    except ImageError:
        raise
    except Image.DecompressionBombError as err:
        raise ImageError(path, f"decompression bomb refused by Pillow ({err})") from err
    except UnidentifiedImageError as err:
        raise ImageError(path, "not an image (Pillow cannot identify the file format)") from err
    except (OSError, SyntaxError, EOFError) as err:
        raise ImageError(path, f"truncated or corrupt image data ({err})") from err
    except ValueError as err:  # e.g. a mode Pillow cannot convert to grey
        raise ImageError(path, f"cannot convert to grayscale ({err})") from err


# --- the decode-once cache ---------------------------------------------------------------


class ImageCache:
    """A built cache: every image as one row of a read-only memory-mapped uint8 array.

    Attributes: ``array`` (memmap ``(N, size, size)``), ``paths`` (list of str, row order),
    ``ok`` (bool array, False where decoding failed; those rows are zeros), ``failed`` (list of
    ``{"path", "reason"}``), ``size``, ``path`` (the ``.npy`` file), ``index_path`` (its JSON).
    """

    def __init__(self, npy_path: Path, index: dict[str, Any]) -> None:
        self.path = Path(npy_path)
        self.index_path = self.path.with_suffix(".json")
        self.array: np.ndarray = np.load(self.path, mmap_mode="r", allow_pickle=False)
        self.paths: list[str] = list(index["paths"])
        self.size: int = int(index["size"])
        self.ok: np.ndarray = np.asarray(index["ok"], dtype=np.bool_)
        self.failed: list[dict[str, str]] = list(index["failed"])
        self.fingerprint: str = index["fingerprint"]
        self._row = {p: i for i, p in enumerate(self.paths)}
        expected = (len(self.paths), self.size, self.size)
        if self.array.shape != expected or self.array.dtype != np.uint8:
            raise ValueError(
                f"{self.path}: cache array is {self.array.dtype} {self.array.shape}, "
                f"index says uint8 {expected}"
            )

    def __len__(self) -> int:
        return len(self.paths)

    def __repr__(self) -> str:
        return (
            f"ImageCache({len(self)} images at {self.size}x{self.size}, "
            f"{len(self.failed)} failed, {self.path})"
        )

    def index_of(self, path: str | Path) -> int:
        """Row of ``path`` (as given to :func:`build_cache`); ``KeyError`` if not cached."""
        try:
            return self._row[str(path)]
        except KeyError:
            raise KeyError(f"{path} is not in the cache {self.path}") from None

    def batch(
        self, indices: Sequence[int] | np.ndarray, *, pin_memory: bool = False
    ) -> torch.Tensor:
        """Rows ``indices`` as a uint8 tensor ``(B, 1, S, S)``, in the order given.

        Rows are gathered in ascending order straight into the output tensor (one copy;
        ``pin_memory`` makes it page-locked for fast non-blocking GPU copies). Unsorted
        ``indices`` cost one extra reorder copy.
        """
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        n_rows = len(self.paths)
        if idx.size and (idx.min() < 0 or idx.max() >= n_rows):
            raise IndexError(f"cache rows must be in [0, {n_rows}); got {idx.min()}..{idx.max()}")
        order = None
        if idx.size > 1 and np.any(idx[1:] < idx[:-1]):
            order = np.argsort(idx, kind="stable")
            idx = idx[order]
        out = torch.empty(
            (idx.size, 1, self.size, self.size), dtype=torch.uint8, pin_memory=pin_memory
        )
        # mode="clip" (bounds already checked) lets numpy write into `out` without a buffer.
        np.take(self.array, idx, axis=0, out=out.numpy()[:, 0], mode="clip")
        if order is not None:
            inverse = torch.from_numpy(np.argsort(order))
            out = out[inverse]
            if pin_memory:
                out = out.pin_memory()
        return out


def cache_fingerprint(paths: Sequence[str | Path], size: int, intensity: str = "none") -> str:
    """sha1 of the format version, the size, the intensity mode and each file's (path, bytes,
    mtime_ns).

    Any added, removed, renamed, rewritten or touched file, another size or another intensity
    normalisation changes it.
    Missing files are part of the fingerprint too (they will be recorded as failed).
    """
    digest = hashlib.sha1()
    header = {"format_version": CACHE_FORMAT_VERSION, "size": size, "intensity": intensity}
    digest.update(json.dumps(header).encode())
    for p in paths:
        try:
            stat = os.stat(p)
            entry = f"{p}\0{stat.st_size}\0{stat.st_mtime_ns}\n"
        except OSError:
            entry = f"{p}\0missing\n"
        digest.update(entry.encode("utf-8", "surrogateescape"))
    return digest.hexdigest()


def _open_existing(
    npy_path: Path, index_path: Path, fingerprint: str, n: int, size: int
) -> ImageCache | None:
    """The cache at ``npy_path`` if its index exists and matches; otherwise None (rebuild).

    The index is written last, so a missing or mismatching index means the array may be
    incomplete and is never trusted.
    """
    if not (index_path.is_file() and npy_path.is_file()):
        return None
    try:
        index = json.loads(index_path.read_text(encoding="utf-8"))
        if (
            index.get("format_version") != CACHE_FORMAT_VERSION
            or index.get("fingerprint") != fingerprint
            or index.get("size") != size
            or len(index.get("paths", ())) != n
        ):
            return None
        return ImageCache(npy_path, index)
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _remove_stale_temps(cache_dir: Path, stem: str, older_than_s: float = 3600.0) -> None:
    """Delete temporary files of this cache left by a build killed more than an hour ago.

    Younger ones may belong to a build running right now in another process, so they stay
    (they are never read: only the final names are).
    """
    now = time.time()
    for stale in cache_dir.glob(f"{stem}.*.tmp-*"):
        try:
            if now - stale.stat().st_mtime > older_than_s:
                stale.unlink()
        except OSError:
            pass


def _decode_or_reason(path: str, size: int, intensity: str) -> np.ndarray | str:
    """:func:`load_gray`, returning the failure reason instead of raising (for the pool)."""
    try:
        return load_gray(path, size, intensity=intensity)
    except ImageError as err:
        return err.reason


def build_cache(
    paths: Sequence[str | Path],
    size: int,
    cache_dir: Path,
    progress: bool = True,
    *,
    workers: int = DECODE_WORKERS,
    intensity: str = "none",
) -> ImageCache:
    """Decode every image once to uint8 ``size x size`` and store them in one ``.npy`` array.

    The files are named by :func:`cache_fingerprint`, so a valid existing cache is reused
    without decoding anything, and a changed dataset or size builds a new one. The array is
    written through ``open_memmap`` (bounded memory) under a temporary name and renamed when
    complete; the JSON index (``paths``, ``size``, ``ok``, ``failed``, ``fingerprint``,
    ``format_version``) is renamed into place last, and only an index makes a cache valid.
    Images that fail to decode get a zero row, ``ok=False`` and their reason in ``failed``;
    a one-line warning gives the count. ``intensity``: see :func:`normalize_intensity`.
    """
    if intensity not in INTENSITY_CHOICES:
        raise ValueError(f"intensity must be one of {INTENSITY_CHOICES}, got {intensity!r}")
    if size <= 0:
        raise ValueError(f"size must be positive, got {size}")
    path_list = [str(p) for p in paths]
    if len(set(path_list)) != len(path_list):
        raise ValueError("build_cache: paths contain duplicates")
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    fingerprint = cache_fingerprint(path_list, size, intensity)
    mode = "" if intensity == "none" else f"-{intensity}"
    stem = f"gray{size}{mode}-{len(path_list)}-{fingerprint[:16]}"
    npy_path = cache_dir / f"{stem}.npy"
    index_path = cache_dir / f"{stem}.json"

    cache = _open_existing(npy_path, index_path, fingerprint, len(path_list), size)
    if cache is None:
        _remove_stale_temps(cache_dir, stem)
        cache = _build(
            path_list, size, npy_path, index_path, fingerprint, progress, workers, intensity
        )
    if cache.failed:
        warnings.warn(
            f"{len(cache.failed)} of {len(cache)} images could not be decoded (zero rows, "
            f"ok=False; reasons in {cache.index_path})",
            stacklevel=2,
        )
    return cache


def _build(
    paths: list[str],
    size: int,
    npy_path: Path,
    index_path: Path,
    fingerprint: str,
    progress: bool,
    workers: int,
    intensity: str,
) -> ImageCache:
    """Decode ``paths`` into a new cache (see :func:`build_cache`); one pass, bounded memory."""
    from tqdm.auto import tqdm

    n = len(paths)
    tmp = npy_path.with_name(f"{npy_path.name}.tmp-{os.getpid()}")
    array = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(n, size, size))
    ok = np.zeros(n, dtype=np.bool_)
    failed: list[dict[str, str]] = []
    window = 256  # images in flight at once: bounds memory whatever the dataset size
    try:
        with (
            ThreadPoolExecutor(max_workers=max(1, workers)) as pool,
            tqdm(
                total=n, desc=f"caching images at {size}px", unit="img", disable=not progress
            ) as bar,
        ):
            for start in range(0, n, window):
                chunk = paths[start : start + window]
                for offset, result in enumerate(
                    pool.map(
                        _decode_or_reason, chunk, [size] * len(chunk), [intensity] * len(chunk)
                    )
                ):
                    row = start + offset
                    if isinstance(result, str):
                        array[row] = 0
                        failed.append({"path": paths[row], "reason": result})
                    else:
                        array[row] = result
                        ok[row] = True
                    bar.update(1)
        array.flush()
        del array
        os.replace(tmp, npy_path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    index = {
        "format_version": CACHE_FORMAT_VERSION,
        "fingerprint": fingerprint,
        "size": size,
        "intensity": intensity,
        "decoder": f"pillow-{Image.__version__} draft>={DRAFT_FACTOR}x bicubic",
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "paths": paths,
        "ok": ok.tolist(),
        "failed": failed,
    }
    atomic_write_text(index_path, json.dumps(index, indent=1))  # last: now the cache is valid
    return ImageCache(npy_path, index)


# --- whole-batch tensor ops --------------------------------------------------------------


def normalize_batch(x: torch.Tensor) -> torch.Tensor:
    """``(B, 1, S, S)`` uint8 (0-255) or float (0-1) -> float32 ``(B, 3, S, S)`` with ImageNet
    mean/std (grey replicated to the three channels the pretrained backbone expects).

    One fused multiply-add broadcasts the single channel to three: ``x * (1/std) - mean/std``.
    """
    if x.ndim != 4 or x.shape[1] != 1:
        raise ValueError(f"normalize_batch expects (B, 1, S, S), got {tuple(x.shape)}")
    mean, std = _imagenet_stats(x.device)
    if x.dtype == torch.uint8:
        scale = 1.0 / (255.0 * std)
    elif x.is_floating_point():
        scale = 1.0 / std
    else:
        raise TypeError(f"normalize_batch expects uint8 or float, got {x.dtype}")
    return torch.addcmul(-mean / std, x.to(torch.float32), scale)


def denormalize(x: torch.Tensor) -> torch.Tensor:
    """Undo :func:`normalize_batch` for display: ``(..., 3, S, S)`` -> values in [0, 1]."""
    if x.shape[-3] != 3:
        raise ValueError(f"denormalize expects 3 channels at dim -3, got {tuple(x.shape)}")
    shape = (3, 1, 1)
    mean, std = (t.view(shape) for t in _imagenet_stats(x.device))
    return (x.float() * std + mean).clamp(0.0, 1.0)


def _color_jitter(
    x: torch.Tensor,
    brightness: torch.Tensor,
    contrast: torch.Tensor,
    brightness_first: bool,
) -> torch.Tensor:
    """torchvision's ``ColorJitter`` brightness+contrast on a float (n, 1, H, W) batch.

    Brightness multiplies; contrast blends with the image's mean (taken after the first step
    when brightness comes first, as torchvision does); each step clamps to [0, 1].
    torchvision applies the two in a random order; the caller groups images by order.
    """
    b = brightness.view(-1, 1, 1, 1)
    c = contrast.view(-1, 1, 1, 1)

    def adjust_contrast(img: torch.Tensor) -> torch.Tensor:
        mean = img.mean(dim=(1, 2, 3), keepdim=True)
        return torch.addcmul((1.0 - c) * mean, img, c).clamp_(0.0, 1.0)

    if brightness_first:
        return adjust_contrast((x * b).clamp_(0.0, 1.0))
    return adjust_contrast(x).mul_(b).clamp_(0.0, 1.0)


def _affine_theta(
    angle: torch.Tensor,
    tx: torch.Tensor,
    ty: torch.Tensor,
    shear: torch.Tensor,
    height: int,
    width: int,
) -> torch.Tensor:
    """``(n, 2, 3)`` matrices for ``affine_grid`` reproducing ``torchvision.transforms.functional
    .affine(img, angle, [tx, ty], scale=1, shear=[shear, 0])`` on tensors.

    torchvision's inverse matrix (``_get_inverse_affine_matrix`` with the centre at the image
    centre) maps output pixel coordinates to input ones; dividing by half the image size
    turns it into ``affine_grid``'s normalised coordinates (``align_corners=False``).
    """
    rot = torch.deg2rad(angle.double())
    sx = torch.deg2rad(shear.double())
    # Forward rotation+shear RSS = [[a, b], [c, d]] (shear_y = 0); its inverse is [[d, -b], [-c, a]].
    a = torch.cos(rot)
    b = -torch.cos(rot) * torch.tan(sx) - torch.sin(rot)
    c = torch.sin(rot)
    d = -torch.sin(rot) * torch.tan(sx) + torch.cos(rot)
    m0, m1, m3, m4 = d, -b, -c, a
    m2 = m0 * -tx.double() + m1 * -ty.double()
    m5 = m3 * -tx.double() + m4 * -ty.double()
    row0 = torch.stack([m0, m1 * height / width, m2 * 2.0 / width], dim=1)
    row1 = torch.stack([m3 * width / height, m4, m5 * 2.0 / height], dim=1)
    return torch.stack([row0, row1], dim=1).float()


def _affine(
    x: torch.Tensor,
    angle: torch.Tensor,
    tx: torch.Tensor,
    ty: torch.Tensor,
    shear: torch.Tensor,
    mode: str = "nearest",
) -> torch.Tensor:
    """Rotate/translate/shear a float (n, 1, H, W) batch in one ``grid_sample``; outside the
    image is 0 (``RandomAffine``'s default fill, and its default nearest interpolation)."""
    height, width = x.shape[-2:]
    theta = _affine_theta(angle, tx, ty, shear, height, width).to(x.device)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode=mode, padding_mode="zeros", align_corners=False)


def augment_params(
    n: int, height: int, width: int, generator: torch.Generator
) -> dict[str, torch.Tensor]:
    """Draw the random parameters of :func:`augment_batch` for ``n`` images (CPU tensors).

    ``choice`` (0 jitter, 1 affine, 2 flip), ``brightness``/``contrast`` factors,
    ``brightness_first``, ``angle`` (degrees), ``tx``/``ty`` (whole pixels), ``shear``
    (degrees): torchvision's ranges. Every parameter is drawn for every image, so the
    generator advances by the same amount whatever the choices.
    """
    gdev = generator.device

    def uniform(low: float, high: float) -> torch.Tensor:
        return torch.empty(n, device=gdev).uniform_(low, high, generator=generator).cpu()

    choice = torch.randint(0, 3, (n,), generator=generator, device=gdev).cpu()
    brightness = uniform(1.0 - JITTER_BRIGHTNESS, 1.0 + JITTER_BRIGHTNESS)
    contrast = uniform(1.0 - JITTER_CONTRAST, 1.0 + JITTER_CONTRAST)
    brightness_first = uniform(0.0, 1.0) < 0.5
    angle = uniform(-AFFINE_DEGREES, AFFINE_DEGREES)
    max_dx, max_dy = AFFINE_TRANSLATE[0] * width, AFFINE_TRANSLATE[1] * height
    return {
        "choice": choice,
        "brightness": brightness,
        "contrast": contrast,
        "brightness_first": brightness_first,
        "angle": angle,
        "tx": torch.round(uniform(-max_dx, max_dx)),
        "ty": torch.round(uniform(-max_dy, max_dy)),
        "shear": uniform(-AFFINE_SHEAR, AFFINE_SHEAR),
    }


def apply_augmentation(x: torch.Tensor, params: dict[str, torch.Tensor]) -> torch.Tensor:
    """Apply parameters from :func:`augment_params` to a float ``(B, 1, S, S)`` batch.

    Images are grouped by what they get (jitter in either order, affine, flip) and each
    group is transformed with one set of batched tensor operations.
    """
    choice, first = params["choice"], params["brightness_first"]
    out = torch.empty_like(x)  # every image falls in exactly one of the groups below
    dev = x.device
    groups = {
        "jitter_bc": torch.nonzero((choice == 0) & first).flatten(),
        "jitter_cb": torch.nonzero((choice == 0) & ~first).flatten(),
        "affine": torch.nonzero(choice == 1).flatten(),
        "flip": torch.nonzero(choice == 2).flatten(),
    }
    for name, rows in groups.items():
        if not rows.numel():
            continue
        on_dev = rows.to(dev)
        if name == "affine":
            angle, tx, ty, shear = (params[k][rows] for k in ("angle", "tx", "ty", "shear"))
            out[on_dev] = _affine(x[on_dev], angle, tx, ty, shear)
        elif name == "flip":
            out[on_dev] = torch.flip(x[on_dev], dims=[-1])
        else:
            b = params["brightness"][rows].to(dev)
            c = params["contrast"][rows].to(dev)
            out[on_dev] = _color_jitter(x[on_dev], b, c, brightness_first=name == "jitter_bc")
    return out


def augment_batch(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """The article's augmentation for a whole batch: each image gets ONE of, uniformly,

    * ``ColorJitter(brightness=0.2, contrast=0.2)``: factors ``U(0.8, 1.2)``, applied in a
      random order, contrast about the image mean, clamped to [0, 1];
    * ``RandomAffine(degrees=10, translate=(0.1, 0.1), shear=2)``: angle ``U(-10, 10)``,
      whole-pixel shifts up to 10% of the side, x-shear ``U(-2, 2)`` degrees, nearest
      neighbour, zero fill (one ``affine_grid`` + ``grid_sample`` for all affine images);
    * ``RandomHorizontalFlip(p=1)``.

    This matches torchvision's per-image ``RandomChoice`` of those transforms in
    distribution: the same parameter ranges and the same formulas (each branch reproduces
    the torchvision functional op for given parameters; see the tests), but the random
    numbers are drawn in a different order, so it is not bit-identical for a given seed.
    ``x``: float in [0, 1], ``(B, 1, S, S)``, on any device (the work happens there). All
    randomness comes from ``generator``: equal seeds give equal results.
    """
    if x.ndim != 4 or x.shape[1] != 1 or not x.is_floating_point():
        raise ValueError(
            f"augment_batch expects float (B, 1, S, S), got {x.dtype} {tuple(x.shape)}"
        )
    params = augment_params(x.shape[0], x.shape[-2], x.shape[-1], generator)
    return apply_augmentation(x, params)


AUGMENT_POLICIES = ("article", "robust")
# Extra perturbations of the "robust" policy, applied to every image after the article's choice.
ROBUST_GAMMA = (0.7, 1.5)  # log-uniform exposure curve
ROBUST_CONTRAST = (0.7, 1.3)  # about the image mean
ROBUST_BRIGHTNESS = 0.08  # additive shift, +-
ROBUST_SCALE = (0.9, 1.15)  # zoom in or out about the centre


def robust_perturbation(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Intensity, contrast and scale changes wider than the article's, for every image.

    Why: the official test split was acquired differently from the training split (a known
    trait of this dataset), and models trained on train over-call pneumonia on test. Exposure
    (gamma), contrast, brightness and field-of-view (zoom) are what differs between X-ray
    machines and protocols; varying them in training asks the model not to rely on them.
    ``x``: float in [0, 1], ``(B, 1, S, S)``. All four parameters are drawn for every image.
    """
    n, dev = x.shape[0], x.device

    def uniform(low: float, high: float) -> torch.Tensor:
        return torch.empty(n).uniform_(low, high, generator=generator).to(dev).view(-1, 1, 1, 1)

    log_gamma = uniform(math.log(ROBUST_GAMMA[0]), math.log(ROBUST_GAMMA[1]))
    contrast = uniform(*ROBUST_CONTRAST)
    brightness = uniform(-ROBUST_BRIGHTNESS, ROBUST_BRIGHTNESS)
    scale = uniform(*ROBUST_SCALE).view(-1)
    x = x.clamp(1e-6, 1.0).pow(log_gamma.exp())
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = ((x - mean) * contrast + mean + brightness).clamp_(0.0, 1.0)
    theta = torch.zeros(n, 2, 3, device=dev)
    theta[:, 0, 0] = theta[:, 1, 1] = 1.0 / scale
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def augment_policy(x: torch.Tensor, generator: torch.Generator, policy: str) -> torch.Tensor:
    """``"article"``: :func:`augment_batch`; ``"robust"``: that, then :func:`robust_perturbation`."""
    if policy not in AUGMENT_POLICIES:
        raise ValueError(f"augmentation policy must be one of {AUGMENT_POLICIES}, got {policy!r}")
    x = augment_batch(x, generator)
    return robust_perturbation(x, generator) if policy == "robust" else x


# --- per-image pipelines (display, single images) ---------------------------------------


class GrayResize:
    """PIL image of any mode -> ``L`` image ``size x size`` (the same conversion as the cache,
    except that the cache may decode JPEGs at a reduced scale: within 0.2 grey levels)."""

    def __init__(self, size: int) -> None:
        self.size = size

    def __call__(self, image: Image.Image) -> Image.Image:
        return Image.fromarray(gray_resize(image, self.size), mode="L")

    def __repr__(self) -> str:
        return f"GrayResize({self.size})"


class ToNormalizedTensor:
    """``L`` image -> float ``(3, S, S)`` tensor, normalised like :func:`normalize_batch`."""

    def __call__(self, image: Image.Image) -> torch.Tensor:
        pixels = torch.from_numpy(np.array(image, dtype=np.uint8, copy=True))
        return normalize_batch(pixels[None, None])[0]

    def __repr__(self) -> str:
        return "ToNormalizedTensor()"


def article_augmentation() -> T.RandomChoice:
    """The article's per-image augmentation: one of jitter, affine, flip, chosen uniformly."""
    return T.RandomChoice(
        [
            T.ColorJitter(brightness=JITTER_BRIGHTNESS, contrast=JITTER_CONTRAST),
            T.RandomAffine(degrees=AFFINE_DEGREES, translate=AFFINE_TRANSLATE, shear=AFFINE_SHEAR),
            T.RandomHorizontalFlip(p=1.0),
        ]
    )


def train_transform(size: int) -> T.Compose:
    """Per-image training pipeline: PIL image (any mode) -> augmented, normalised ``(3, S, S)``.

    Grey + bicubic resize, then the article's ``RandomChoice`` of ColorJitter / RandomAffine /
    horizontal flip, then ImageNet normalisation. Training itself uses the faster batch path
    (:class:`BatchLoader` with :func:`augment_batch`), which matches this in distribution.
    """
    return T.Compose([GrayResize(size), article_augmentation(), ToNormalizedTensor()])


def eval_transform(size: int) -> T.Compose:
    """Per-image evaluation pipeline: grey + bicubic resize + normalisation, no randomness.

    The original notebook applied the random augmentation to the validation and test images
    too, so its reported scores were measured on randomly altered images; that bug is fixed
    here: evaluation is deterministic.
    """
    return T.Compose([GrayResize(size), ToNormalizedTensor()])


# --- batches for training and evaluation ------------------------------------------------


class BatchLoader:
    """Batches of normalised images from an :class:`ImageCache`, one epoch per ``iter()``.

    Yields ``(x, y)``: ``x`` float32 ``(B, 3, S, S)`` normalised, ``y`` int64 ``(B,)``, on
    ``device``. Epoch ``k`` (the k-th ``iter()``, or the one chosen with :meth:`set_epoch`)
    draws its shuffle order and augmentation from a generator seeded by ``(seed, k)`` only,
    so a resumed run calling ``set_epoch(k)`` sees exactly the batches of the original run.
    With ``shuffle=True`` rows inside each batch are read in ascending cache order (faster;
    the batch's members are unchanged); with ``shuffle=False`` batches follow ``indices``
    exactly, so predictions line up with ``indices``. The last batch may be smaller.

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
        return math.ceil(len(self.indices) / self.batch_size)

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
        for start in range(0, n, self.batch_size):
            pos = order[start : start + self.batch_size]
            if self.shuffle:
                pos = pos[np.argsort(self.indices[pos], kind="stable")]
            x = self.cache.batch(self.indices[pos], pin_memory=cuda)
            y = self.targets[torch.from_numpy(pos)]
            x = x.to(self.device, non_blocking=cuda)
            y = y.to(self.device, non_blocking=cuda)
            if self.augment:
                x = augment_policy(x.to(torch.float32).div_(255.0), generator, self.policy)
            yield normalize_batch(x), y
