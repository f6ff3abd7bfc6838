"""Does this picture look like the X-rays the model was trained on? An explainable input check.

A model outputs a probability for anything it is given: a phone photo of a film on a light
box, a negative, a chart. This module says when a picture differs from the training images in
ways the model has never seen, with a reason a reader understands. It uses no second model
and no network: a handful of measurements of the picture (:func:`image_features`), compared
with the same measurements of the training images, which :func:`write_input_stats` stores in
the run folder (``input-stats.json``) when training starts.

The measurements, all on the picture squashed to ``CHECK_SIZE`` x ``CHECK_SIZE`` grey levels
(0-255), as the model squashes it:

* ``colour``: the mean colour saturation, max(R, G, B) - min(R, G, B). A scanned film is grey
  (0); a photo of a film under a warm light, or any natural photograph, is not.
* ``mean`` and ``contrast``: the mean and the standard deviation of the grey levels: a
  washed-out photo of a screen, a mostly white chart or page, a black picture.
* ``texture``: how much neighbouring pixels differ, on average. An X-ray is smooth at this
  scale; noise, text and line drawings are not.
* ``centre``: the middle band (spine, heart) minus the two lung fields beside it. Positive
  on upright frontal chest X-rays (all but 2 of the 5,216 Kaggle train images, the lowest
  -1.5); clearly negative on a negative (inverted) film, and often near zero or negative on a
  picture turned on its side or not of a chest.
* ``border``: a uniform band (one grey level, give or take ``BORDER_TOLERANCE``) along each
  side. A light box or a monitor leaves one on three or four sides (a *frame*); a training
  image rarely has more than two (black margins beside the chest: 4 of the 5,216 do).
* ``aspect`` and ``size``: width / height and the short side, from the file's header, upright.

The bounds of the five measurements come from the training images' 0.5 % and 99.5 %
quantiles, widened by ``MARGIN`` times their distance (never by less than the feature's
``floor``); the frame is a fixed rule (``FRAME_SIDES`` sides of at least ``FRAME_MIN``), and
the aspect and size bounds are the training images' range stretched by ``ASPECT_FACTOR`` and
``SIZE_FACTOR``. How they were chosen on the training and validation images, and the
false-flag rate measured on the official test split, are in ``docs/input-check.md``
(``benchmarks/input_check.py`` measures them again).

:func:`crop_uniform_border` removes a frame, so that the model sees the film only
(``python -m helpers predict --crop-border``). :func:`check_image` is the one function a
program calls, with a path or a PIL image and the run's statistics (:func:`read_input_stats`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image, ImageOps

from helpers.files import atomic_write_text
from helpers.images import (
    DRAFT_FACTOR,
    ImageError,
    gray_resize,
    normalize_intensity,
    open_upright,
    oriented_size,
    to_gray,
)

CHECK_SIZE = 128
"""The side, in pixels, of the square every measurement is made on (smaller than any training
image, so a full-resolution file and a 224-px copy of it measure alike)."""

STATS_FILE = "input-stats.json"
"""The run folder's file holding the training images' statistics."""

STATS_FORMAT = 1
MAX_STATS_IMAGES = 1000
"""Training images measured at most (a seeded sample): ~2 s at 224 px on one core, more for
full-resolution files."""

QUANTILES = (0.005, 0.5, 0.995)
"""The quantiles of each feature stored in ``input-stats.json``: low end, median, high end."""

MARGIN = 0.25
"""How far outside the training images' 0.5-99.5 % range a feature may go before it is
flagged, as a fraction of that range (chosen on the validation split, see the docs)."""

BORDER_TOLERANCE = 10.0
"""Grey levels a pixel of a uniform border may differ from its row's median (JPEG noise, uneven
lighting)."""

BORDER_SHARE = 0.95
"""Share of a row's pixels that must be within the tolerance for the row to be border."""

FRAME_MIN = 0.02
"""A side has a border when its uniform band is at least this fraction of the picture."""

FRAME_SIDES = 3
"""Sides with a border that make a frame (a light box, a monitor bezel)."""

CROP_INSET = 0.0
"""Extra fraction of the picture cut beyond a detected border. None: cutting into the film
moved a model's answers more than the few blurred pixels of frame left in (measured on
light-box photos of choose-half test images: 0, 0.2, 0.4 and 1 % gave mean differences from
the original of 0.008, 0.010, 0.024 and 0.046; ``docs/input-check.md``)."""

SIZE_FACTOR = 2.5
"""How many times smaller or larger than the training images (their 0.5 % and 99.5 %
quantiles of the short side) a picture may be before it is flagged."""

ASPECT_FACTOR = 1.25
"""How many times narrower or wider (width / height) than the training images' 0.5-99.5 %
range a picture may be before it is flagged."""

SIDES = ("top", "bottom", "left", "right")

FEATURES: dict[str, dict[str, Any]] = {
    "colour": {"low": False, "high": True, "floor": 6.0},
    "mean": {"low": True, "high": True, "floor": 5.0},
    "contrast": {"low": True, "high": True, "floor": 5.0},
    "texture": {"low": True, "high": True, "floor": 0.5},
    "centre": {"low": True, "high": False, "floor": 5.0},
}
"""The features compared with the training images' quantiles: which side is flagged (a
negative film has a low centre; nothing is wrong with a very high one), and the smallest
widening of the bounds, in grey levels, for features whose training range is nearly zero
(colour: every training image is grey, so 6 grey levels of saturation are allowed)."""

DEFAULT_SIZES: dict[str, Any] = {
    "source": (
        "defaults: the 144 full-resolution Kaggle train images of ../shared/data/"
        "kermany-fullres-sample (benchmarks/input_check.py sizes)"
    ),
    "aspect": {"0.005": 0.9055, "0.5": 1.398, "0.995": 2.308},
    "short_side": {"0.005": 269.05, "0.5": 908.0, "0.995": 2036.13},
}
"""Sizes of the original Kaggle train images, used when a run's own training images say
nothing about sizes: all of one size (a resized copy such as ``kermany-224``), or unknown."""


# --- measuring a picture ------------------------------------------------------------------------


def read_image(
    source: str | Path | Image.Image, full: bool = False
) -> tuple[Image.Image, tuple[int, int]]:
    """The upright picture (EXIF orientation applied) and its upright ``(width, height)``.

    A path is decoded through :func:`helpers.images.open_upright`; a JPEG at a reduced DCT
    scale unless ``full`` (a crop needs every pixel). A PIL image is used as given, its EXIF
    orientation applied if it still carries one. Raises :class:`ImageError` for a bad file.
    """
    if isinstance(source, Image.Image):
        upright = ImageOps.exif_transpose(source)
        return upright, upright.size
    path = Path(source)
    try:
        with Image.open(path) as header:
            size = oriented_size(header)
    except (OSError, ValueError):
        size = None  # open_upright names the problem
    image = open_upright(path, None if full else ("RGB", DRAFT_FACTOR * CHECK_SIZE))
    return image, size or image.size


def _has_colour(image: Image.Image) -> bool:
    """Whether ``image``'s mode can hold colour at all (grey modes are measured as 0)."""
    return image.mode in ("RGB", "RGBA", "RGBX", "P", "PA", "CMYK", "YCbCr", "LAB", "HSV")


def _square(image: Image.Image, mode: str) -> np.ndarray:
    """``image`` in ``mode`` (``"L"`` via :func:`to_gray`, or ``"RGB"``) squashed to
    ``CHECK_SIZE``, as float32 grey levels 0-255."""
    if mode == "L":
        return gray_resize(image, CHECK_SIZE).astype(np.float32)
    rgb = image.convert("RGB").resize((CHECK_SIZE, CHECK_SIZE), Image.Resampling.BICUBIC)
    return np.asarray(rgb, dtype=np.float32)


def uniform_border(grey: np.ndarray, tolerance: float = BORDER_TOLERANCE) -> dict[str, int]:
    """Rows or columns of uniform border along each side of a grey array, in pixels.

    Walking inwards from each edge, a row (a column, for the left and right sides) is border
    while at least ``BORDER_SHARE`` of its pixels are within ``tolerance`` grey levels of its
    median and that median is within ``tolerance`` of the previous row's (a slow gradient of
    the lighting is allowed, an edge is not). The left and right sides are measured between
    the top and bottom borders, then the top and bottom between the left and right ones, so
    that frames of different shades on different sides are found. At most half of a side.
    """

    def band(lines: np.ndarray) -> int:
        medians = np.median(lines, axis=1)
        uniform = (np.abs(lines - medians[:, None]) <= tolerance).mean(axis=1) >= BORDER_SHARE
        steady = np.abs(np.diff(medians, prepend=medians[:1])) <= tolerance
        ok = (uniform & steady)[: len(lines) // 2]
        return int(ok.size if ok.all() else np.argmin(ok))

    height, width = grey.shape
    top, bottom = band(grey), band(grey[::-1])
    rows = grey[top : height - bottom] if top + bottom < height else grey
    left, right = band(rows.T), band(rows.T[::-1])
    cols = grey[:, left : width - right] if left + right < width else grey
    top, bottom = band(cols), band(cols[::-1])
    return {"top": top, "bottom": bottom, "left": left, "right": right}


def border_fractions(grey: np.ndarray) -> dict[str, float]:
    """:func:`uniform_border` as fractions of the picture's height (top, bottom) or width."""
    bands = uniform_border(grey)
    height, width = grey.shape
    return {side: bands[side] / (height if side in ("top", "bottom") else width) for side in SIDES}


def centre_minus_lungs(grey: np.ndarray) -> float:
    """Mean grey of the middle vertical band (spine, heart; 42-58 % of the width, 20-80 % of
    the height) minus that of the two lung fields beside it (15-35 % and 65-85 % of the width,
    20-70 % of the height), for a square grey array."""
    s = grey.shape[0]

    def cut(a: float, b: float) -> slice:
        return slice(round(a * s), round(b * s))

    centre = grey[cut(0.2, 0.8), cut(0.42, 0.58)].mean()
    lungs = np.concatenate(
        [grey[cut(0.2, 0.7), cut(0.15, 0.35)], grey[cut(0.2, 0.7), cut(0.65, 0.85)]], axis=1
    ).mean()
    return float(centre - lungs)


def image_features(image: Image.Image) -> dict[str, float]:
    """The check's measurements of one upright picture (see the module's docstring), in grey
    levels 0-255; ``border_<side>`` as fractions of the picture's side."""
    grey = _square(image, "L")
    colour = 0.0
    if _has_colour(image):
        rgb = _square(image, "RGB")
        colour = float((rgb.max(axis=2) - rgb.min(axis=2)).mean())
    texture = (np.abs(np.diff(grey, axis=0)).mean() + np.abs(np.diff(grey, axis=1)).mean()) / 2
    features = {
        "colour": colour,
        "mean": float(grey.mean()),
        "contrast": float(grey.std()),
        "texture": float(texture),
        "centre": centre_minus_lungs(grey),
    }
    features.update({f"border_{side}": v for side, v in border_fractions(grey).items()})
    return features


def frame_sides(features: dict[str, float]) -> list[str]:
    """The sides whose uniform border is at least ``FRAME_MIN`` of the picture."""
    return [side for side in SIDES if features[f"border_{side}"] >= FRAME_MIN]


# --- the training images' statistics ----------------------------------------------------------


def _quantiles(values: np.ndarray) -> dict[str, float]:
    return {f"{q:g}": float(np.quantile(values, q)) for q in QUANTILES}


def size_stats(widths: np.ndarray, heights: np.ndarray, what: str) -> dict[str, Any]:
    """Quantiles of the aspect ratio and the short side of images of these sizes; the
    defaults (:data:`DEFAULT_SIZES`) when they are all one size (a resized copy)."""
    widths, heights = np.asarray(widths, dtype=float), np.asarray(heights, dtype=float)
    if widths.size == 0 or (np.all(widths == widths[0]) and np.all(heights == heights[0])):
        shape = f"{widths[0]:.0f} x {heights[0]:.0f}" if widths.size else "unknown"
        return {
            **DEFAULT_SIZES,
            "source": f"{DEFAULT_SIZES['source']}; {what} are all {shape} (resized copies: "
            "their sizes say nothing about the original films)",
        }
    return {
        "source": f"{what} ({widths.size} files' headers)",
        "aspect": _quantiles(widths / heights),
        "short_side": _quantiles(np.minimum(widths, heights)),
    }


def training_stats(
    table: pd.DataFrame, seed: int = 0, max_images: int = MAX_STATS_IMAGES, what: str = ""
) -> dict[str, Any]:
    """The statistics the check compares a picture with, from training images.

    ``table`` has the scan table's ``path``, ``width`` and ``height`` columns (sizes upright,
    from the headers). At most ``max_images`` of the files (a sample drawn with ``seed``) are
    decoded and measured with :func:`image_features`; files that fail to decode are counted
    and left out. The sizes use every row (:func:`size_stats`). Returns a JSON-friendly dict.
    """
    what = what or f"{len(table)} training images"
    rng = np.random.default_rng(seed)
    rows = (
        table
        if len(table) <= max_images
        else table.iloc[np.sort(rng.choice(len(table), max_images, replace=False))]
    )
    measured, failed = [], 0
    for path in rows["path"]:
        try:
            image, _ = read_image(path)
        except ImageError:
            failed += 1
            continue
        measured.append(image_features(image))
    if not measured:
        raise ValueError(f"no decodable image among the {len(rows)} {what} sampled")
    frame = pd.DataFrame(measured)
    return {
        "format": STATS_FORMAT,
        "check_size": CHECK_SIZE,
        "source": f"{len(measured)} of the {what}"
        + (f" (seed {seed})" if len(rows) < len(table) else "")
        + (f"; {failed} failed to decode" if failed else ""),
        "n_images": len(measured),
        "features": {name: _quantiles(frame[name].to_numpy()) for name in FEATURES},
        "frame_share": float(np.mean([len(frame_sides(row)) >= FRAME_SIDES for row in measured])),
        "sizes": size_stats(table["width"], table["height"], what),
    }


def write_input_stats(run_dir: str | Path, train: pd.DataFrame, seed: int = 0) -> Path:
    """Measure the run's training images (:func:`training_stats`) and write
    ``run_dir/input-stats.json`` atomically; kept as it is when it already exists (a resumed
    run trains on the same images). Returns its path."""
    path = Path(run_dir) / STATS_FILE
    if not path.is_file():
        stats = training_stats(train, seed, what=f"{len(train)} training images of this run")
        atomic_write_text(path, json.dumps(stats, indent=2))
    return path


def read_input_stats(run_dir: str | Path) -> tuple[dict[str, Any], str]:
    """The run's statistics and where they come from, in words for the reader.

    ``input-stats.json`` when the run wrote one. An older run has none: the statistics are
    then computed now from its training images, when ``config.json`` names a data folder
    that is still there, else the defaults measured on the Kaggle train split
    (:data:`DEFAULT_STATS`) are used; the returned text says which.
    """
    run_dir = Path(run_dir)
    path = run_dir / STATS_FILE
    if path.is_file():
        try:
            stats = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            raise ValueError(f"{path}: unreadable input statistics ({err})") from err
        if stats.get("format") != STATS_FORMAT:
            raise ValueError(
                f"{path}: format {stats.get('format')}, this version reads {STATS_FORMAT}"
            )
        return stats, f"{path} ({stats['source']})"
    why = f"{path} does not exist (the run was trained before the input check)"
    try:
        train = _run_training_images(run_dir)
    except (OSError, ValueError) as err:
        return (
            DEFAULT_STATS,
            f"{why}, and its training data is not reachable ({err}): using {DEFAULT_STATS['source']}",
        )
    stats = training_stats(train, what=f"{len(train)} training images of the run, measured now")
    return stats, f"{why}: computed now from {stats['source']}"


def _run_training_images(run_dir: Path) -> pd.DataFrame:
    """The training table of a run, recomputed from its ``config.json`` (data root, recipe)."""
    from helpers.config import Config
    from helpers.data import make_splits, scan

    path = run_dir / "config.json"
    if not path.is_file():
        raise ValueError(f"no {path}")
    record = json.loads(path.read_text(encoding="utf-8"))
    root = record.get("data", {}).get("root")
    if not root or not Path(root).is_dir():
        raise ValueError(f"{path} names no existing data folder ({root})")
    config = Config.from_dict(record.get("config", {}))
    train = make_splits(scan(root).images, config)["train"]
    if train.empty:
        raise ValueError(f"{root}: no training images")
    return train


# --- the verdict -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Flag:
    """One reason a picture does not look like the training X-rays."""

    feature: str
    reason: str


@dataclass
class InputCheck:
    """The check's verdict on one picture.

    ``flags`` lists the reasons (empty: it looks like the training images on every
    measurement); ``features`` holds the measurements of the picture the model sees;
    ``crop_box`` is the ``(left, top, right, bottom)`` box that was kept when a frame was
    cropped (``None`` otherwise) and ``image`` that picture, upright (cropped or not).
    """

    features: dict[str, float]
    flags: list[Flag]
    size: tuple[int, int]
    crop_box: tuple[int, int, int, int] | None = None
    image: Image.Image | None = field(default=None, repr=False)

    @property
    def ok(self) -> bool:
        """True when nothing was flagged."""
        return not self.flags

    def summary(self) -> str:
        """One line: ``ok`` or the reasons, with what the crop removed."""
        text = "; ".join(f"{f.feature}: {f.reason}" for f in self.flags) or "ok"
        if self.crop_box is not None:
            left, top, right, bottom = self.crop_box
            width, height = self.size
            text += (
                f" (frame cropped: kept {right - left} x {bottom - top} of {width} x {height} px)"
            )
        return text


def _bounds(name: str, stats: dict[str, Any]) -> tuple[float, float, dict[str, float]]:
    """The allowed range of feature ``name``: the training quantiles, widened."""
    q = stats["features"][name]
    low, high = q[f"{QUANTILES[0]:g}"], q[f"{QUANTILES[-1]:g}"]
    widen = max(MARGIN * (high - low), FEATURES[name]["floor"])
    return low - widen, high + widen, q


def _feature_flags(features: dict[str, float], stats: dict[str, Any]) -> list[Flag]:
    """The continuous features outside their allowed range, each with a reason."""
    flags = []
    for name, rule in FEATURES.items():
        low, high, q = _bounds(name, stats)
        value = features[name]
        q_low, q_high = q[f"{QUANTILES[0]:g}"], q[f"{QUANTILES[-1]:g}"]
        seen = f"training X-rays: 99 % within {q_low:.1f} to {q_high:.1f}; allowed {low:.1f} to {high:.1f}"
        if rule["high"] and value > high:
            flags.append(Flag(name, _HIGH[name].format(v=value, seen=seen)))
        elif rule["low"] and value < low:
            flags.append(Flag(name, _LOW[name].format(v=value, seen=seen)))
    return flags


_HIGH = {
    "colour": "a colour picture: mean colour saturation {v:.1f} grey levels, where a scanned "
    "film has none ({seen}); a photo of a film or a screen, or not an X-ray",
    "mean": "brighter overall than the training X-rays: mean grey {v:.1f} ({seen}); a washed-out "
    "photo, a chart or a page?",
    "contrast": "harsher contrast than the training X-rays: grey-level spread {v:.1f} ({seen}); a "
    "chart, text or a drawing?",
    "texture": "grainy: neighbouring pixels differ by {v:.1f} grey levels on average ({seen}); "
    "noise, a screen's pattern, text or lines, not an X-ray",
}
_LOW = {
    "mean": "darker overall than the training X-rays: mean grey {v:.1f} ({seen})",
    "contrast": "flatter than the training X-rays: grey-level spread {v:.1f} ({seen}); glare, a "
    "washed-out photo, or a nearly uniform picture",
    "texture": "smoother than the training X-rays: neighbouring pixels differ by {v:.1f} grey "
    "levels ({seen}); a heavily blurred or drawn picture",
    "centre": "the middle of the picture (spine, heart) is darker than the lung fields beside it "
    "by {v:.1f} grey levels ({seen}); a negative (inverted) film, a picture on its side, or not a "
    "frontal chest X-ray",
}


def _shape_flags(size: tuple[int, int], stats: dict[str, Any]) -> list[Flag]:
    """The aspect ratio and the short side against the training images' sizes."""
    sizes = stats.get("sizes") or DEFAULT_SIZES
    width, height = size
    flags = []
    aspect, short = width / height, min(width, height)
    a_low, a_high = sizes["aspect"][f"{QUANTILES[0]:g}"], sizes["aspect"][f"{QUANTILES[-1]:g}"]
    if not a_low / ASPECT_FACTOR <= aspect <= a_high * ASPECT_FACTOR:
        flags.append(Flag(
            "aspect",
            f"width / height {aspect:.2f} ({width} x {height} px), where 99 % of the training "
            f"images are within {a_low:.2f} to {a_high:.2f}; squashed to a square, the chest "
            "would be distorted",
        ))  # fmt: skip
    s_low, s_high = (
        sizes["short_side"][f"{QUANTILES[0]:g}"],
        sizes["short_side"][f"{QUANTILES[-1]:g}"],
    )
    if short < s_low / SIZE_FACTOR:
        flags.append(Flag(
            "size",
            f"only {short} px on its short side, where 99 % of the training images have "
            f"{s_low:.0f} to {s_high:.0f}: fine detail is missing",
        ))  # fmt: skip
    elif short > s_high * SIZE_FACTOR:
        flags.append(Flag(
            "size",
            f"{short} px on its short side, where 99 % of the training images have "
            f"{s_low:.0f} to {s_high:.0f}: a much larger picture than the training films",
        ))  # fmt: skip
    return flags


def _frame_flag(features: dict[str, float], stats: dict[str, Any]) -> list[Flag]:
    sides = frame_sides(features)
    if len(sides) < FRAME_SIDES:
        return []
    widths = ", ".join(f"{side} {features[f'border_{side}']:.0%}" for side in sides)
    share = stats.get("frame_share")
    seen = f"; {share:.1%} of the training images have one" if share is not None else ""
    return [Flag(
        "border",
        f"a uniform frame on {len(sides)} sides ({widths}){seen}: a film photographed on a light "
        "box or a screen? Crop the picture to the film (or use --crop-border)",
    )]  # fmt: skip


def crop_box(image: Image.Image) -> tuple[int, int, int, int] | None:
    """The ``(left, top, right, bottom)`` box inside a frame, or ``None`` without a frame.

    The frame is found on a grey copy at most 1,024 px long (its aspect kept, for a precise
    edge), with :func:`uniform_border`; a side counts when its band is at least
    ``FRAME_MIN`` of the picture, and at least ``FRAME_SIDES`` sides must. Each such side is
    cut a further ``CROP_INSET`` of the picture.
    """
    scale = min(1.0, 1024 / max(image.size))
    small = to_gray(image)
    small = small.resize(
        (max(1, round(image.width * scale)), max(1, round(image.height * scale))),
        Image.Resampling.BICUBIC,
    )
    fractions = border_fractions(np.asarray(small, dtype=np.float32))
    sides = frame_sides({f"border_{side}": fraction for side, fraction in fractions.items()})
    if len(sides) < FRAME_SIDES:
        return None
    cut = {side: fractions[side] + CROP_INSET if side in sides else 0.0 for side in SIDES}
    box = (
        round(cut["left"] * image.width),
        round(cut["top"] * image.height),
        round((1 - cut["right"]) * image.width),
        round((1 - cut["bottom"]) * image.height),
    )
    return box if box[2] > box[0] and box[3] > box[1] else None


def crop_uniform_border(image: Image.Image) -> tuple[Image.Image, tuple[int, int, int, int] | None]:
    """``image`` without its uniform frame (:func:`crop_box`), and the box kept; ``image``
    itself and ``None`` when it has no frame."""
    box = crop_box(image)
    return (image, None) if box is None else (image.crop(box), box)


def check_image(
    source: str | Path | Image.Image, stats: dict[str, Any], *, crop_border: bool = False
) -> InputCheck:
    """Check one picture (a path or a PIL image) against a run's statistics.

    ``stats`` is what :func:`read_input_stats` returns (the run's ``input-stats.json``).
    With ``crop_border`` a frame is cropped first (:func:`crop_uniform_border`) and the
    picture that remains is checked: it is what the model is given. Raises
    :class:`ImageError` for a file that cannot be read.
    """
    image, size = read_image(source, full=crop_border)
    box = None
    if crop_border:
        image, box = crop_uniform_border(image)
    features = image_features(image)
    flags = _frame_flag(features, stats) + _feature_flags(features, stats)
    flags += _shape_flags(image.size if box is not None else size, stats)
    return InputCheck(features, flags, size, box, image)


def model_input(
    path: str | Path, image_size: int, intensity: str = "none", crop_border: bool = False
) -> tuple[np.ndarray, tuple[int, int, int, int] | None]:
    """The grey ``uint8 (image_size, image_size)`` array the model sees for one file, and the
    box kept when ``crop_border`` cropped a frame.

    Without a crop this is :func:`helpers.images.load_gray`, exactly as the evaluation decodes
    the file; with one, the full picture is decoded, cropped to the film, and resized and
    normalised the same way. Raises :class:`ImageError` for a file that cannot be read.
    """
    from helpers.images import load_gray

    if not crop_border:
        return load_gray(path, image_size, intensity=intensity), None
    image, _ = read_image(path, full=True)
    cropped, box = crop_uniform_border(image)
    if box is None:
        return load_gray(path, image_size, intensity=intensity), None
    return normalize_intensity(gray_resize(cropped, image_size), intensity), box


def picture_seen(path: str | Path, crop_border: bool = False) -> np.ndarray:
    """The grey ``uint8 (height, width)`` picture at its own resolution, upright, cropped to
    the film when ``crop_border`` finds a frame: the picture :func:`model_input` squashes for
    the model, on which ``predict --gradcam`` draws its overlay. Without ``crop_border`` it is
    :func:`helpers.images.load_gray` at the picture's own size. Raises :class:`ImageError`."""
    from helpers.images import load_gray

    if not crop_border:
        return load_gray(path, None)
    image, _ = read_image(path, full=True)
    cropped, _ = crop_uniform_border(image)
    return gray_resize(cropped, None)


DEFAULT_STATS: dict[str, Any] = {
    "format": STATS_FORMAT,
    "check_size": CHECK_SIZE,
    "source": (
        "defaults: the 4,955 training images of the Kaggle train split (the recipe's split, "
        "seed 42) in ../shared/data/kermany-224, measured by benchmarks/input_check.py defaults"
    ),
    "n_images": 4955,
    "features": {
        "colour": {"0.005": 0.0, "0.5": 0.0, "0.995": 0.0},
        "mean": {"0.005": 73.28, "0.5": 122.89, "0.995": 171.33},
        "contrast": {"0.005": 30.2, "0.5": 56.73, "0.995": 77.96},
        "texture": {"0.005": 3.05, "0.5": 5.54, "0.995": 8.97},
        "centre": {"0.005": 12.51, "0.5": 54.67, "0.995": 93.37},
    },
    "frame_share": 0.0008,
    "sizes": DEFAULT_SIZES,
}
"""Statistics of the Kaggle train split, for runs that have no ``input-stats.json`` and whose
training data is gone (``python -m benchmarks.input_check defaults``, see ``docs/input-check.md``)."""
