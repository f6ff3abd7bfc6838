"""Decoding one image file to a small grey square: the only place pixels are read from disk.

Chest X-rays arrive as 8-bit JPEGs (grey or RGB), sometimes as 16-bit PNGs, sometimes as
phone photos carrying an EXIF orientation. :func:`load_gray` turns any of them into one
``uint8`` array of ``size x size``: EXIF orientation applied, converted to one grey channel,
squashed to the square with bicubic resampling (aspect ratio not kept, as the article), and
optionally intensity-normalised per image (:func:`normalize_intensity`). Every path of the
project (scan sizes, the cache, prediction of single files) goes through it.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from helpers.config import INTENSITY_CHOICES, MAX_IMAGE_PIXELS

DRAFT_FACTOR = 2
"""JPEGs are decoded at a reduced DCT scale, but never below ``DRAFT_FACTOR x`` the target
size; bicubic resizing then does the rest (within a fraction of a grey level of a full
decode; see ``benchmarks/README.md``)."""

SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")


class ImageError(ValueError):
    """An image file that cannot be used; the message names the file and the problem.

    ``permanent`` is True when the bytes themselves are the problem (not an image, truncated,
    a decompression bomb, an unsupported mode): reading the same file again gives the same
    answer. :class:`ImageReadError` is the other kind.
    """

    permanent = True

    def __init__(self, path: str | Path, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


class ImageReadError(ImageError):
    """The file could not be read at all: missing, no permission, an I/O error (a network
    drive that dropped out). Not a property of the image, so never kept as one: trying again
    later may work (:mod:`helpers.cache` retries it)."""

    permanent = False


class UnsupportedModeError(ValueError):
    """A Pillow image mode that Pillow cannot convert to grey (``LAB``, ``La``)."""


EXIF_ORIENTATION = 0x0112
"""The EXIF tag saying how a camera held the image; values 5-8 mean a quarter turn."""


def oriented_size(image: Image.Image) -> tuple[int, int]:
    """``(width, height)`` of ``image`` once its EXIF orientation is applied (header only:
    no pixel is decoded). A phone photo stored sideways reports its upright size."""
    width, height = image.size
    try:
        orientation = image.getexif().get(EXIF_ORIENTATION, 1)
    except Exception:  # an unreadable EXIF block only means no known orientation
        orientation = 1
    return (height, width) if orientation in (5, 6, 7, 8) else (width, height)


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
    try:
        return image.convert("L")
    except ValueError as err:  # "conversion from LAB to RGB not supported" and the like
        raise UnsupportedModeError(f"mode {mode} cannot be converted to grey ({err})") from err


def gray_resize(image: Image.Image, size: int | None) -> np.ndarray:
    """Any-mode PIL image -> uint8 ``(size, size)`` array: :func:`to_gray`, then bicubic resize
    (Pillow's, which antialiases when shrinking). The aspect ratio is not preserved.
    ``size=None`` keeps the image's own ``(height, width)``."""
    gray = to_gray(image)
    resized = gray if size is None else gray.resize((size, size), Image.Resampling.BICUBIC)
    if resized.mode == "L":
        return np.array(resized, dtype=np.uint8)  # a writable copy
    return np.clip(np.rint(np.asarray(resized, dtype=np.float32)), 0, 255).astype(np.uint8)


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


def normalize_intensity(image: np.ndarray, mode: str) -> np.ndarray:
    """Apply ``mode`` (one of :data:`INTENSITY_CHOICES`) to a uint8 grey image."""
    if mode == "none":
        return image
    if mode == "equalize":
        return equalize(image)
    raise ValueError(f"intensity must be one of {INTENSITY_CHOICES}, got {mode!r}")


def open_upright(path: str | Path, draft: tuple[str, int] | None = None) -> Image.Image:
    """Open and decode one image file, upright: its EXIF orientation (phone photos) applied.

    ``draft=(mode, size)`` lets a JPEG decode at a reduced DCT scale in ``mode`` (``"L"`` or
    ``"RGB"``), never below ``size`` pixels a side; other formats decode in full. Raises
    :class:`ImageError` naming the file for an empty or truncated file, something that is not
    an image, or more than ``MAX_IMAGE_PIXELS`` pixels; and :class:`ImageReadError` (an
    ``ImageError`` with ``permanent=False``) when the file cannot be read at all: missing, no
    permission, an I/O error. Nothing else is caught, so a bug is never reported as a bad
    image. :func:`load_gray` and the input check (:mod:`helpers.inputcheck`) both read files
    through it.
    """
    path = Path(path)
    try:
        nbytes = path.stat().st_size
    except OSError as err:
        raise ImageReadError(path, f"cannot read file ({err.strerror or err})") from err
    if nbytes == 0:
        raise ImageError(path, "zero bytes (empty file)")
    try:
        with Image.open(path) as image:
            width, height = image.size
            if width * height > MAX_IMAGE_PIXELS:
                raise ImageError(
                    path,
                    f"decompression bomb refused: {width}x{height} = {width * height / 1e6:.0f} "
                    f"megapixels > {MAX_IMAGE_PIXELS / 1e6:.0f} MP limit",
                )
            if draft is not None and image.format == "JPEG":
                image.draft(draft[0], (draft[1], draft[1]))
            image.load()
            return ImageOps.exif_transpose(image)  # a phone photo's rotation, applied (a copy)
    except ImageError:
        raise
    except Image.DecompressionBombError as err:
        raise ImageError(path, f"decompression bomb refused by Pillow ({err})") from err
    except UnidentifiedImageError as err:
        raise ImageError(path, "not an image (Pillow cannot identify the file format)") from err
    except OSError as err:
        if err.errno is not None:  # the operating system's error (EIO, EACCES, ENOENT...)
            raise ImageReadError(path, f"cannot read file ({err.strerror or err})") from err
        # Pillow's own OSErrors carry no errno: "image file is truncated", "broken data stream"
        raise ImageError(path, f"truncated or corrupt image data ({err})") from err
    except (SyntaxError, EOFError) as err:  # how some Pillow decoders report corrupt data
        raise ImageError(path, f"truncated or corrupt image data ({err})") from err


def load_gray(
    path: str | Path, size: int | None, *, draft: bool = True, intensity: str = "none"
) -> np.ndarray:
    """Decode one image file to a uint8 ``(size, size)`` grayscale array (bicubic, squashed).

    ``size=None`` keeps the picture at its own resolution, upright and grey, ``(height,
    width)``: what a Grad-CAM overlay is drawn on (:mod:`helpers.explain`).

    An EXIF orientation tag (phone photos) is applied first, so the image is upright;
    ``intensity`` then applies a per-image normalisation (:func:`normalize_intensity`).

    JPEGs are decoded with ``Image.draft`` at a reduced DCT scale when the target is much
    smaller (never below ``DRAFT_FACTOR x size``); ``draft=False`` forces a full decode.
    Raises what :func:`open_upright` raises, and :class:`ImageError` for a mode that cannot
    be converted to grey; nothing else is caught.
    """
    if intensity not in INTENSITY_CHOICES:
        raise ValueError(f"intensity must be one of {INTENSITY_CHOICES}, got {intensity!r}")
    upright = open_upright(path, ("L", DRAFT_FACTOR * size) if draft and size else None)
    try:
        return normalize_intensity(gray_resize(upright, size), intensity)
    except UnsupportedModeError as err:
        raise ImageError(path, f"cannot convert to grayscale ({err})") from err


MAX_DOWNLOAD_BYTES = 50_000_000
"""Largest image :func:`fetch_image` downloads (a chest X-ray JPEG is a few megabytes)."""


def fetch_image(source: str | Path, folder: str | Path) -> Path:
    """A local path for ``source``: the file itself, or an ``http(s)://`` URL downloaded into
    ``folder`` (written to a temporary name, renamed when complete).

    A download is saved as ``<12 hex digits of the URL's sha256>-<the URL's file name>``, so
    two URLs that end in the same name (``.../a/image.png`` and ``.../b/image.png``) never
    overwrite each other, and the same URL always maps to the same file.

    Raises :class:`ImageError` naming the source when the file does not exist, the download
    fails, or it is larger than :data:`MAX_DOWNLOAD_BYTES`. Nothing is decoded here: the file
    is read by :func:`load_gray` like any other.
    """
    text = str(source)
    if not text.startswith(("http://", "https://")):
        path = Path(text).expanduser()
        if not path.is_file():
            raise ImageError(text, "no such file")
        return path
    import hashlib
    import urllib.error
    import urllib.request
    from urllib.parse import urlparse

    from helpers.files import atomic_write_bytes

    name = Path(urlparse(text).path).name or "downloaded-image"
    target = Path(folder) / f"{hashlib.sha256(text.encode()).hexdigest()[:12]}-{name}"
    try:
        with urllib.request.urlopen(text, timeout=30) as response:  # noqa: S310 (http(s) only)
            payload = response.read(MAX_DOWNLOAD_BYTES + 1)
    except (urllib.error.URLError, OSError, ValueError) as err:
        raise ImageError(text, f"download failed ({err})") from err
    if len(payload) > MAX_DOWNLOAD_BYTES:
        raise ImageError(text, f"larger than {MAX_DOWNLOAD_BYTES // 1_000_000} MB, not downloaded")
    atomic_write_bytes(target, payload)
    return target
