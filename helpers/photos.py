"""What readers try first: an X-ray photographed on a light box, tinted, sideways, negative.

The input check (:mod:`helpers.inputcheck`) must recognise such pictures, and notebook 06
shows them; these functions make them from any X-ray, so that a test, a benchmark and the
notebook use the same variants. They imitate, with a few parameters, what issue 23 tried as
a reader would: the film enlarged, laid on an evenly lit light-grey frame, slightly blurred,
saved as a colour JPEG whose pixels are stored sideways with an EXIF orientation tag.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter, ImageOps

from helpers.files import atomic_path
from helpers.images import EXIF_ORIENTATION

LIGHT_BOX_GREY = 215
"""The light box's grey level around the film (0-255): evenly lit, lighter than most films."""


def light_box_photo(
    image: Image.Image,
    scale: float = 8.0,
    border: tuple[float, float] = (0.22, 0.28),
    grey: int = LIGHT_BOX_GREY,
    blur: float = 2.0,
) -> Image.Image:
    """``image`` enlarged ``scale`` times and laid on a uniform ``grey`` frame, then blurred.

    ``border`` is the frame's width left/right and top/bottom, as fractions of the enlarged
    film's width and height (the defaults give issue 23's 2592 x 2792 px from a 224-px image).
    ``blur`` is a Gaussian radius in pixels of the result, as a phone's slight defocus. The
    result is RGB, as a phone saves it.
    """
    film = image.convert("RGB")
    width, height = round(film.width * scale), round(film.height * scale)
    film = film.resize((width, height), Image.Resampling.BICUBIC)
    pad_x, pad_y = round(border[0] * width), round(border[1] * height)
    photo = Image.new("RGB", (width + 2 * pad_x, height + 2 * pad_y), (grey, grey, grey))
    photo.paste(film, (pad_x, pad_y))
    return photo.filter(ImageFilter.GaussianBlur(blur)) if blur > 0 else photo


def tinted(image: Image.Image, tint: tuple[float, float, float] = (1.0, 0.85, 0.62)) -> Image.Image:
    """``image`` with its red, green and blue channels scaled by ``tint``: the warm cast of a
    light box or a screen photographed without white balance."""
    rgb = np.asarray(image.convert("RGB"), dtype=np.float32) * np.asarray(tint, dtype=np.float32)
    return Image.fromarray(np.clip(np.rint(rgb), 0, 255).astype(np.uint8))


def negative(image: Image.Image) -> Image.Image:
    """The negative of ``image`` (grey levels inverted), as a film held the wrong way or a
    viewer's inverted display."""
    return ImageOps.invert(image.convert("RGB") if image.mode not in ("L", "RGB") else image)


def noise_image(size: tuple[int, int] = (512, 512), seed: int = 0) -> Image.Image:
    """A grey image of uniform random noise (``size`` = width, height): no X-ray at all."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, size=(size[1], size[0]), dtype=np.uint8)
    return Image.fromarray(pixels)


def save_sideways_jpeg(image: Image.Image, path: str | Path, quality: int = 92) -> Path:
    """Save ``image`` as a colour JPEG stored sideways with EXIF orientation 6, as a phone
    held upright but with its sensor turned does: the pixels are the picture turned a quarter
    counter-clockwise, and the tag tells a viewer to turn it back. A reader that honours EXIF
    (:func:`helpers.images.load_gray`) sees ``image`` upright again."""
    stored = image.convert("RGB").transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = 6  # "rotate 90 degrees clockwise to display"
    path = Path(path)
    with atomic_path(path) as tmp:
        stored.save(tmp, format="JPEG", quality=quality, exif=exif.tobytes())
    return path
